"""processes.py: commands run in sessions of their own, output in files, and a timeout or a kill reaches every process
a command started, not only the first."""

import os
import signal
import subprocess
import sys
import time

import pytest

import processes

# A parent that starts a child in a session of its own (as torchrun starts its ranks), prints both pids, and sleeps.
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print("pids", os.getpid(), child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie no one reaped yet is dead too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _pids(text: str) -> list[int]:
    line = next(line for line in text.splitlines() if line.startswith("pids"))
    return [int(pid) for pid in line.split()[1:]]


def test_run_returns_what_subprocess_run_would():
    script = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = processes.run([sys.executable, "-c", script])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_timeout_kills_the_command_and_what_it_started_in_other_sessions():
    command = [sys.executable, "-c", PARENT]
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        processes.run(command, timeout=3)
    parent, child = _pids(raised.value.output)
    time.sleep(0.2)
    assert not _alive(parent) and not _alive(child)


def test_run_until_acts_once_the_output_shows_the_line_and_waits_for_the_end(tmp_path):
    command = [sys.executable, "-c", "import time\nfor i in range(100):\n    print('step', i)\n    time.sleep(0.05)"]
    launched = processes.run_until(
        command, lambda text: "step 3\n" in text, lambda p: p.signal(signal.SIGTERM), 30, log=tmp_path / "run"
    )
    assert launched.returncode == -signal.SIGTERM and not launched.timed_out
    assert "step 3\n" in launched.stdout() and "step 99" not in launched.stdout()
    assert (tmp_path / "run.out").read_text() == launched.stdout()


def test_wait_says_why_it_returned_and_kill_stops_the_whole_tree(tmp_path):
    quick = processes.Launched([sys.executable, "-c", "print('done')"])
    assert processes.wait([quick], 30) == "exited" and quick.completed().stdout == "done\n"
    slow = processes.Launched([sys.executable, "-c", PARENT], tmp_path / "p")
    assert processes.wait([slow], 30, until=lambda text: "pids" in text) == "until"
    assert processes.wait([slow], 0.3) == "timeout" and slow.running()
    parent, child = _pids(slow.stdout())
    assert processes.child_pids(parent) == [child]
    slow.kill()
    time.sleep(0.2)
    assert not _alive(parent) and not _alive(child) and slow.returncode == -signal.SIGKILL

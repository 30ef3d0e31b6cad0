"""Child processes for the tests and the device check: each command in a session (process group) of its own, with its
output in files, stopped or killed whole, so that a timeout or a signal reaches every process it started (torchrun's
ranks, DataLoader workers) and none is left running after a failed test.

    result = run([sys.executable, "train.py", ...], timeout=600)      # a CompletedProcess; the whole group killed
                                                                       # (then TimeoutExpired) past the timeout
    node = Launched(command, log=tmp_path / "node0")                   # long-lived; node0.out, node0.err
    wait([node], timeout=300, until=lambda text: "Epoch: [1]" in text)
    node.signal_group(signal.SIGTERM)                                  # as a terminal or SLURM signals a job
    stopped = run_until(command, until, lambda p: p.signal(signal.SIGTERM), timeout=600)

It lives at the top level, beside the project's modules, though train.py and predict.py never use it: tests/ and
benchmarks/ both import from the repository root (conftest and every benchmark script put it on sys.path), scripts
never import one another, and neither folder imports the other's files. Everything here uses only the standard
library and `pgrep`.
"""

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent
POLL_SECONDS = 0.05  # how often wait() looks at the processes and their output


def child_pids(pid: int) -> list[int]:
    """The ids of the process's children, oldest first (pgrep -P)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(child) for child in found)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants, children first (torchrun starts its workers in sessions of their own,
    which a signal to the launcher's process group misses)."""
    for child in child_pids(pid):
        kill_tree(child)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Launched:
    """A command started in a session of its own, its stdout and stderr in `log`.out and `log`.err (files, not pipes,
    which fill up and stall the process while nobody reads them); without `log`, in a temporary folder of its own.
    PYTHONUNBUFFERED=1, so that the files hold every line as it is printed."""

    def __init__(self, command: Sequence[str], log: Path | None = None, env: dict | None = None, cwd: Path = ROOT):
        self.command = [str(part) for part in command]
        if log is None:
            self._folder = tempfile.TemporaryDirectory(prefix="launched-")
            log = Path(self._folder.name) / "process"
        self.out_path, self.err_path = log.with_suffix(".out"), log.with_suffix(".err")
        self.timed_out = False
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                self.command, cwd=cwd, stdout=out, stderr=err, env=env, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- stdout\n{self.stdout()[-chars:]}\n--- stderr\n{self.stderr()[-chars:]}"

    def signal(self, signum: int) -> None:
        """`signum` to the process alone."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        """`signum` to its whole process group, as a terminal's Ctrl-C or SLURM's preemption sends it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL it, its descendants and what is left of its process group; then reap it."""
        if self.running():  # once reaped, its pid may be another process's
            kill_tree(self.process.pid)
        self.signal_group(signal.SIGKILL)
        self.process.wait()

    def finish(self, timeout: float) -> "Launched":
        """Wait for the end; past `timeout` seconds, kill it whole (timed_out)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
        return self

    def completed(self) -> subprocess.CompletedProcess:
        """What subprocess.run would have returned, once it has ended."""
        return subprocess.CompletedProcess(self.command, self.process.wait(), self.stdout(), self.stderr())


def wait(
    processes: Sequence[Launched], timeout: float, until: Callable[[str], bool] | None = None
) -> Literal["until", "exited", "timeout"]:
    """Until(their stdout together) holds while one still runs ("until"), every process has exited ("exited"), or
    `timeout` seconds pass ("timeout"; the processes are left running: the caller decides what to do with them)."""
    deadline = time.monotonic() + timeout
    while any(process.running() for process in processes):
        if until is not None and until("".join(process.stdout() for process in processes)):
            return "until"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(POLL_SECONDS)
    return "exited"


def run(
    command: Sequence[str], timeout: float = 600, env: dict | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True, timeout=...) in a session of its own: past the timeout
    the whole group is killed (not only its first process, as subprocess.run does), then TimeoutExpired is raised."""
    launched = Launched(command, env=env, cwd=cwd).finish(timeout)
    result = launched.completed()
    if launched.timed_out:
        raise subprocess.TimeoutExpired(result.args, timeout, result.stdout, result.stderr)
    return result


def run_until(
    command: Sequence[str],
    until: Callable[[str], bool],
    action: Callable[[Launched], None],
    timeout: float,
    log: Path | None = None,
    env: dict | None = None,
    cwd: Path = ROOT,
) -> Launched:
    """Start `command`, call action(it) once until(its stdout so far) holds, and wait for the end; all within
    `timeout` seconds, past which it is killed whole (timed_out). Returns it, ended."""
    launched = Launched(command, log, env, cwd)
    start = time.monotonic()
    if wait([launched], timeout, until) == "until":
        action(launched)
    return launched.finish(max(timeout - (time.monotonic() - start), 0))

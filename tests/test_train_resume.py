"""train.py never loses work: exact resume from mid-epoch checkpoints, SIGTERM and --auto-resume,
kill -9, non-finite losses, and a torchrun rank that dies.

These are end-to-end runs of train.py in subprocesses on a tiny synthetic dataset (8 iterations
an epoch); "the same weights" means bit for bit (torch.equal), on the CPU with
--use-deterministic-algorithms.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import plots
import processes
import synthetic
from conftest import TINY_MODEL, script

pytestmark = pytest.mark.slow

TINY_RUN = [
    *TINY_MODEL, "--device", "cpu", "--min-size", "64", "--max-size", "96", "--print-freq", "1",
    "--seed", "0", "--epochs", "2", "--lr-steps", "1", "-b", "2", "--opt", "adamw", "--lr", "0.0005",
    "--use-deterministic-algorithms", "--model-kwargs", "box_batch_size_per_image=32", "rpn_pre_nms_top_n_train=100",
    "rpn_post_nms_top_n_train=100", "rpn_pre_nms_top_n_test=100", "rpn_post_nms_top_n_test=100",
]  # fmt: skip
ITERS_PER_EPOCH = 8


@pytest.fixture(autouse=True)
def paced_steps(monkeypatch):
    """Steps of 0.15 s: the tests below signal a run at a printed iteration, and the small model's own steps are
    shorter than the time to see the line (bit-for-bit comparisons are unaffected: the model only waits)."""
    monkeypatch.setenv("TINY_MODEL_STEP_SECONDS", "0.15")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("tiny"), num_train=16, num_val=4, seed=0)


def _command(root: Path, output: Path, *extra: str) -> list[str]:
    return [*script("train.py"), "--data-path", str(root), "--output-dir", str(output), *TINY_RUN, *extra]


def _run_until(command: list[str], line_start: str, action, timeout: int = 600) -> subprocess.CompletedProcess:
    """Start `command` in a session of its own, call action(it) once a stdout line starts with `line_start`, wait for
    the end."""
    printed = re.compile("^" + re.escape(line_start), re.MULTILINE)
    launched = processes.run_until(command, printed.search, action, timeout)
    assert not launched.timed_out, launched.tail()
    return launched.completed()


def _final_weights(output: Path) -> dict[str, torch.Tensor]:
    return torch.load(output / "model_1.pth", weights_only=True)["model"]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


@pytest.fixture(scope="module")
def uninterrupted(tiny_root, tmp_path_factory) -> dict[str, torch.Tensor]:
    output = tmp_path_factory.mktemp("uninterrupted")
    result = processes.run(_command(tiny_root, output, "-j", "0"))
    assert result.returncode == 0, result.stderr[-3000:]
    return _final_weights(output)


@pytest.mark.parametrize(
    ("workers", "stop_at"),
    [("0", "Epoch: [0]  [3/8]"), ("2", "Epoch: [1]  [2/8]")],
    ids=["no workers, in epoch 0's warm-up", "2 workers, in epoch 1"],
)
def test_sigterm_then_auto_resume_gives_the_uninterrupted_weights(tiny_root, tmp_path, uninterrupted, workers, stop_at):
    command = _command(tiny_root, tmp_path, "-j", workers, "--auto-resume")
    stopped = _run_until(command, stop_at, lambda p: p.signal(signal.SIGTERM))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "Stopped by SIGTERM at epoch" in stopped.stdout and "--auto-resume" in stopped.stdout
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert 0 < checkpoint["train_state"]["iteration"] < ITERS_PER_EPOCH  # a mid-epoch checkpoint

    resumed = processes.run(command)  # the same command line, as SLURM would requeue it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Auto-resuming from {tmp_path / 'checkpoint.pth'}" in resumed.stdout
    assert "Epoch: [0]  [0/8]" not in resumed.stdout
    difference = _max_difference(_final_weights(tmp_path), uninterrupted)
    print(f"largest weight difference, -j {workers}: {difference}")
    assert difference == 0


def test_kill_9_after_a_mid_epoch_checkpoint_loses_only_the_work_since(tiny_root, tmp_path, uninterrupted):
    command = _command(tiny_root, tmp_path, "-j", "0", "--checkpoint-every", "3", "--auto-resume")
    # The line "[i/N]" is printed once i + 1 iterations are done: here 4 of epoch 1, and the last save was after 3.
    killed = _run_until(command, "Epoch: [1]  [3/8]", lambda p: p.signal(signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["train_state"]["iteration"]) == (1, 3)

    resumed = processes.run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Epoch: [1]  [3/8]" in resumed.stdout and "Epoch: [1]  [2/8]" not in resumed.stdout
    assert _max_difference(_final_weights(tmp_path), uninterrupted) == 0

    # Both runs appended to metrics.jsonl: iteration 3 of epoch 1 is there twice, with the same losses (an exact
    # resume).
    records = plots.read_records(tmp_path / "metrics.jsonl")
    killed_3, resumed_3 = [r for r in records if r["type"] == "train" and (r["epoch"], r["iteration"]) == (1, 3)]
    assert killed_3["losses"] == resumed_3["losses"] and killed_3["timestamp"] < resumed_3["timestamp"]
    history = plots.latest_history(records)
    assert [r["global_iteration"] for r in history if r["type"] == "train"] == list(range(2 * ITERS_PER_EPOCH))
    assert [r["epoch"] for r in history if r["type"] == "eval"] == [0, 1]


def test_a_run_killed_during_its_last_evaluation_evaluates_when_resumed(tiny_root, tmp_path):
    command = _command(tiny_root, tmp_path, "-j", "0", "--epochs", "1", "--auto-resume")
    killed = _run_until(command, "Test:  [0/", lambda p: p.signal(signal.SIGKILL))
    assert killed.returncode == -signal.SIGKILL
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["train_state"]["evaluated"] is False
    assert not [r for r in plots.read_records(tmp_path / "metrics.jsonl") if r["type"] == "eval"]
    saved_at = (tmp_path / "checkpoint.pth").stat().st_mtime_ns
    (tmp_path / ".checkpoint.pth.tmp").write_bytes(b"a save cut off by a kill -9")

    resumed = processes.run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Evaluating epoch 0 first: the run stopped before its evaluation finished" in resumed.stdout
    assert "Nothing to train" not in resumed.stdout and "Epoch: [" not in resumed.stdout
    assert f"Removed {tmp_path / '.checkpoint.pth.tmp'} (0 MiB)" in resumed.stdout
    assert not (tmp_path / ".checkpoint.pth.tmp").exists()
    (record,) = [r for r in plots.read_records(tmp_path / "metrics.jsonl") if r["type"] == "eval"]
    assert (record["epoch"], record["global_iteration"]) == (0, ITERS_PER_EPOCH)
    assert resumed.stdout.rstrip().splitlines()[-1].startswith("Done after epoch 0: bbox AP")
    # The checkpoint is written once an epoch: the evaluation's record above marks it evaluated, not a second save.
    assert (tmp_path / "checkpoint.pth").stat().st_mtime_ns == saved_at

    again = processes.run(command)  # evaluated now: nothing left to do
    assert again.returncode == 0 and "Nothing to train" in again.stdout and "Evaluating" not in again.stdout


def test_a_non_finite_loss_exits_1_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path):
    # SGD at lr 0.02 from scratch diverges on this data within two epochs.
    result = processes.run(
        _command(
            tiny_root, tmp_path, "-j", "0", "--opt", "sgd", "--lr", "0.5", "--checkpoint-every", "1", "--epochs", "3"
        )
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    error = result.stderr.strip().splitlines()
    assert (
        len(error) == 1 and error[0].startswith("error: loss is ") and "stopped before the optimizer step" in error[0]
    )
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def _kill_one_rank(torchrun: processes.Launched) -> None:
    ranks = processes.child_pids(torchrun.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)


def test_when_a_torchrun_rank_dies_the_others_exit_with_a_message(tiny_root, tmp_path):
    command = _torchrun(tiny_root, tmp_path, "-j", "0", "--dist-timeout", "60", "--epochs", "5")
    started = time.time()
    result = _run_until(command, "Epoch: [0]  [2/", _kill_one_rank, timeout=300)
    assert time.time() - started < 240
    assert result.returncode != 0
    failed = "Signal 9 (SIGKILL)" in result.stderr or "distributed training failed" in result.stderr
    assert failed, result.stderr[-3000:]
    assert not any(p.name.startswith("model_") for p in tmp_path.iterdir())


def _torchrun(root: Path, output: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *_command(root, output, *extra)[1:],
    ]  # fmt: skip: tests/tiny_models.py train.py ...


def _signal_rank_1(torchrun: processes.Launched) -> None:
    ranks = processes.child_pids(torchrun.pid)
    os.kill(ranks[-1], signal.SIGUSR1)  # only one rank hears it; both must stop together


def test_a_signal_to_one_torchrun_rank_stops_every_rank_at_the_same_iteration(tiny_root, tmp_path):
    command = _torchrun(tiny_root, tmp_path, "-j", "0", "--auto-resume")
    stopped = _run_until(command, "Epoch: [0]  [1/", _signal_rank_1, timeout=300)
    assert stopped.returncode != 0
    # Rank 0 prints: it stopped for rank 1's signal (or for the SIGTERM torchrun sends it once rank 1 has exited).
    assert re.search(r"Stopped by (a signal to another rank|SIGTERM) at epoch 0, iteration \d/", stopped.stdout), (
        stopped.stdout[-2000:]
    )
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 0 and 0 < checkpoint["train_state"]["iteration"] < 4
    assert len(checkpoint["train_state"]["rng"]) == 2  # both ranks' random states

    resumed = processes.run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        "Auto-resuming from" in resumed.stdout and torch.load(tmp_path / "model_1.pth", weights_only=True)["epoch"] == 1
    )


# ----------------------------------------------------------------------------- Ctrl-C, as a terminal sends it


def _ctrl_c_at(command: list[str], line_start: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`command` as a terminal's foreground job gets Ctrl-C: SIGINT to its process group, which reaches DataLoader
    workers and torchrun's ranks too."""
    return _run_until(command, line_start, lambda p: p.signal_group(signal.SIGINT), timeout)


def test_ctrl_c_saves_and_auto_resume_gives_the_uninterrupted_weights(tiny_root, tmp_path, uninterrupted):
    command = _command(tiny_root, tmp_path, "-j", "2", "--auto-resume")
    stopped = _ctrl_c_at(command, "Epoch: [0]  [3/8]")
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr, stopped.stderr[-3000:]
    assert "Received SIGINT: stopping after this iteration" in stopped.stderr
    assert "Stopped by SIGINT at epoch 0" in stopped.stdout and "--auto-resume" in stopped.stdout
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert 0 < checkpoint["train_state"]["iteration"] < ITERS_PER_EPOCH

    resumed = processes.run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _max_difference(_final_weights(tmp_path), uninterrupted) == 0


def test_ctrl_c_under_torchrun_saves_once_and_the_run_resumes(tiny_root, tmp_path):
    command = _torchrun(tiny_root, tmp_path, "-j", "0", "--auto-resume")
    stopped = _ctrl_c_at(command, "Epoch: [0]  [1/", timeout=300)
    assert stopped.returncode != 0
    assert re.search(r"Stopped by SIGINT at epoch 0, iteration \d/", stopped.stdout), stopped.stdout[-2000:]
    assert "Second Ctrl-C" not in stopped.stderr  # torchrun's echo of the terminal's signal is not a second one
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 0 and 0 < checkpoint["train_state"]["iteration"] < 4
    assert len(checkpoint["train_state"]["rng"]) == 2

    resumed = processes.run(command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(tmp_path / "model_1.pth", weights_only=True)["epoch"] == 1


# ----------------------------------------------------------------------------- a resumed run's flags


def test_a_resume_without_retyped_flags_runs_the_recorded_run_and_epochs_extends(tiny_root, tmp_path, uninterrupted):
    first = processes.run(_command(tiny_root, tmp_path, "-j", "0", "--epochs", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    bare = [*script("train.py"), "--data-path", str(tiny_root), "--output-dir", str(tmp_path), "--auto-resume"]
    refused = processes.run([*bare, "--epochs", "2", "--min-size", "96"])
    assert refused.returncode == 2
    assert (
        refused.stderr.startswith("error: --min-size: this command says 96 but") and "trained with 64" in refused.stderr
    )
    kept = ["checkpoint.pth", "metrics.jsonl", "model_0.pth", "report.html"]  # the first run's, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == kept

    resumed = processes.run([*bare, "--epochs", "2"])  # none of TINY_RUN's flags: all of them come from the checkpoint
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taken from it: " in resumed.stdout and "--min-size 64" in resumed.stdout, resumed.stdout[:3000]
    assert "images 64-96 px" in resumed.stdout and "Epoch: [1]  [0/8]" in resumed.stdout
    assert _max_difference(_final_weights(tmp_path), uninterrupted) == 0  # exactly the 2-epoch run

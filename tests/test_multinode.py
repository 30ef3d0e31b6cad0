"""Several nodes, on one machine: two torchrun launchers, each one node of `--nnodes=2`, meet through c10d rendezvous
on 127.0.0.1 and train train.py together (gloo, on the CPU); their evaluation prints one AP table, the same as a
single process's evaluation of the same checkpoint; SIGTERM to both nodes mid-epoch stops them together and
--auto-resume takes both on to the end. And SLURM's form without torchrun: two tasks that only have SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID and MASTER_ADDR / MASTER_PORT train and evaluate as one.

The launcher lines are README's ("Several nodes, SLURM"), with 127.0.0.1 and a free port for the first node's host
name and port, and 1 process per node for 8 GPUs; test_the_readme_shows_the_commands_these_tests_run holds the two
together. The model is the tests' small Mask R-CNN (tests/tiny_models.py, which runs train.py with it registered):
several nodes are the point here, not the model's size.
"""

import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch

import processes
import synthetic
from conftest import TINY_MODEL, TINY_MODELS_SCRIPT, script

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# README's commands, as templates: {nproc} processes per node, {host}:{port} the first node's address.
TORCHRUN_NODE = (
    "torchrun --nnodes=2 --nproc-per-node={nproc} --rdzv-backend=c10d --rdzv-endpoint={host}:{port} train.py"
)
SLURM_TASK = "env MASTER_ADDR={host} MASTER_PORT={port} python train.py"
README_HOST, README_PORT, README_NPROC = "$MASTER_ADDR", 29500, 8
README_SLURM_HOST = "$(hostname)"

# test_train_resume.py's tiny run, 2 epochs, no DataLoader workers, a frozen backbone (less optimizer state to save).
TINY_RUN = [
    *TINY_MODEL, "--device", "cpu", "--min-size", "64", "--max-size", "96", "--print-freq", "1", "--seed", "0",
    "--epochs", "2", "--lr-steps", "1", "-b", "2", "--opt", "adamw", "--lr", "0.0005", "-j", "0",
    "--use-deterministic-algorithms", "--trainable-backbone-layers", "0", "--model-kwargs",
    "box_batch_size_per_image=32", "rpn_pre_nms_top_n_train=100", "rpn_post_nms_top_n_train=100",
    "rpn_pre_nms_top_n_test=100", "rpn_post_nms_top_n_test=100",
]  # fmt: skip
ITERS_PER_EPOCH = 4  # 16 training images, 2 per batch, 2 processes
# Each process one thread, as the single-process evaluation it is compared with: two processes on a small machine,
# and the same sums in the same order.
LAUNCHED_BY = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # in case pytest runs under one
ENV = {k: v for k, v in os.environ.items() if k not in LAUNCHED_BY and not k.startswith("SLURM_")}
ENV |= {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
# Steps of 0.15 s for the run that is signalled at a printed iteration (as in test_train_resume.py): the small model's
# own steps are shorter than the time to see the line and send the signal.
PACED = ENV | {"TINY_MODEL_STEP_SECONDS": "0.15"}
TIMEOUT = 300  # seconds for a two-node run
AP_LINE = re.compile(r"^ Average (Precision|Recall) .*$", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny dataset. The small model's backbone has calibrated FrozenBatchNorm2d built in, so that with
    --weights-backbone none it has frozen BatchNorm, in training as in a --test-only evaluation, as a model trained
    from a backbone file has (maskrcnn_resnet50_fpn trained from scratch has BatchNorm2d, whose eval-mode rounding
    differs from FrozenBatchNorm2d's in the last bits, enough to reorder near-tied detections)."""
    return synthetic.generate(tmp_path_factory.mktemp("tiny"), num_train=16, num_val=4, seed=0)


def _data(root: Path, output: Path) -> list[str]:
    return ["--data-path", str(root), "--output-dir", str(output)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    """The torchrun of this Python (the venv's), else the module it runs."""
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def _from_template(template: str, **fields) -> list[str]:
    """A README command line (TORCHRUN_NODE, SLURM_TASK) as these tests run it: torchrun and python this venv's, and
    train.py through tests/tiny_models.py (the small models registered); every other word as README has it."""
    stand_ins = {"torchrun": _torchrun(), "python": [sys.executable], "train.py": [TINY_MODELS_SCRIPT, "train.py"]}
    words = template.format(**fields).split()
    assert words.count("train.py") == 1 and words[-1] == "train.py", template  # the flags go after it
    return [part for word in words for part in stand_ins.get(word, [word])]


def _node_command(root: Path, output: Path, port: int) -> list[str]:
    """One node's command line; --keep-checkpoints 1: model_0.pth goes once model_1.pth is saved (fewer bytes)."""
    launcher = _from_template(TORCHRUN_NODE, nproc=1, host="127.0.0.1", port=port)
    flags = ["--auto-resume", "--save-predictions", "--keep-checkpoints", "1"]
    return [*launcher, *_data(root, output), *flags, *TINY_RUN]


def _node(command: list[str], log: Path, env: dict | None = None) -> processes.Launched:
    """A launcher started as a terminal or SLURM starts a job step: in a session (process group) of its own, its
    output in files (no pipe to fill up while the other node is read)."""
    return processes.Launched(command, log, env or ENV)


def _wait(nodes: list[processes.Launched], until=None, timeout: float = TIMEOUT) -> None:
    """Until every node has exited, or until(both nodes' stdout) holds; the nodes are killed after `timeout`."""
    state = processes.wait(nodes, timeout, until)
    if state == "timeout":
        for node in nodes:
            node.kill()
        pytest.fail("the nodes did not finish in time:\n" + "\n".join(node.tail() for node in nodes))
    assert until is None or state == "until", "the nodes exited before the awaited output:\n" + "\n".join(
        n.tail() for n in nodes
    )


def _run_to_the_end(nodes: list[processes.Launched]) -> str:
    """Wait for every node to exit (killing what is left on the way out); their stdout together."""
    try:
        _wait(nodes)
    finally:
        for node in nodes:
            node.kill()
    return "".join(node.stdout() for node in nodes)


def _ap_tables(text: str, iou_type: str) -> list[list[str]]:
    """The 12-line tables printed after each 'IoU metric: <iou_type>' line."""
    return [[m.group(0) for m in AP_LINE.finditer(part)][:12] for part in text.split(f"IoU metric: {iou_type}\n")[1:]]


def _iterations(text: str, epoch: int) -> list[int]:
    return [int(i) for i in re.findall(rf"^Epoch: \[{epoch}\]\s+\[\s*(\d+)/", text, re.MULTILINE)]


def test_two_torchrun_nodes_train_evaluate_as_one_stop_together_on_sigterm_and_resume(tiny_root, tmp_path):
    output, port = tmp_path / "run", _free_port()
    nodes = [_node(_node_command(tiny_root, output, port), tmp_path / f"node{r}", PACED) for r in (0, 1)]
    try:
        # Once epoch 1 is under way (epoch 0 trained, saved and evaluated), SIGTERM both nodes.
        _wait(nodes, until=lambda text: 0 in _iterations(text, 1))
        for node in nodes:
            node.signal_group(signal.SIGTERM)  # as SLURM's preemption or scancel sends it
        _wait(nodes)
    finally:
        for node in nodes:
            node.kill()
    text = "".join(node.stdout() for node in nodes)
    assert all(node.process.returncode != 0 for node in nodes), "\n".join(node.tail() for node in nodes)
    assert "| distributed init (rank 0, world size 2, gloo)" in text, nodes[0].tail()
    assert re.search(rf"Stopped by SIGTERM at epoch 1, iteration \d/{ITERS_PER_EPOCH}", text), text[-3000:]
    assert len(_iterations(text, 0)) == ITERS_PER_EPOCH  # one node (rank 0) logs, each iteration once
    checkpoint = torch.load(output / "checkpoint.pth", weights_only=True)
    assert checkpoint["epoch"] == 1 and 0 < checkpoint["train_state"]["iteration"] < ITERS_PER_EPOCH
    assert len(checkpoint["train_state"]["rng"]) == 2  # both nodes' random states

    # Epoch 0's evaluation: one AP table per IoU type over both nodes' output, a single process's on the same file.
    tables = {t: _ap_tables(text, t) for t in ("bbox", "segm")}
    assert [len(v) for v in tables.values()] == [1, 1] and all(len(v[0]) == 12 for v in tables.values()), text
    single = processes.run(
        [*script("train.py"), "--data-path", str(tiny_root), "--output-dir", str(tmp_path / "single"),
         "--test-only", "--resume", str(output / "model_0.pth"), "--device", "cpu", "-j", "0", "--save-predictions"],
        TIMEOUT, env=ENV,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    assert {t: _ap_tables(single.stdout, t) for t in ("bbox", "segm")} == tables
    # The detections themselves, every score and mask: the sharded evaluation merged is the single process's.
    merged = (output / "predictions_0.json").read_text()
    assert json.loads(merged), "no detections to compare: the comparison below would hold for any sharding"
    assert merged == (tmp_path / "single" / "predictions.json").read_text()

    # The same command on both nodes again, as a requeued job runs it: on from the next batch, to the end.
    port = _free_port()
    resumed = [_node(_node_command(tiny_root, output, port), tmp_path / f"resumed{r}") for r in (0, 1)]
    text = _run_to_the_end(resumed)
    assert all(node.process.returncode == 0 for node in resumed), "\n".join(node.tail() for node in resumed)
    assert f"Auto-resuming from {output / 'checkpoint.pth'}" in text
    stopped_at = checkpoint["train_state"]["iteration"]
    assert _iterations(text, 0) == [] and _iterations(text, 1) == list(range(stopped_at, ITERS_PER_EPOCH))
    assert [len(_ap_tables(text, t)) for t in ("bbox", "segm")] == [1, 1]
    final = torch.load(output / "model_1.pth", weights_only=True)
    assert final["epoch"] == 1 and len(final["train_state"]["rng"]) == 2


def test_slurm_tasks_without_torchrun_train_and_evaluate_as_one(tiny_root, tmp_path):
    """srun starts one task per GPU with SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID set; README's command adds the
    first node's address. Here two tasks, each on a "node" of its own (local id 0)."""
    port = _free_port()
    command = [*_from_template(SLURM_TASK, host="127.0.0.1", port=port), *_data(tiny_root, tmp_path), *TINY_RUN]
    command += ["--epochs", "1"]
    tasks = []
    for rank in (0, 1):
        slurm = {"SLURM_PROCID": rank, "SLURM_NTASKS": 2, "SLURM_LOCALID": 0, "SLURM_NODEID": rank}
        tasks.append(_node(command, tmp_path / f"task{rank}", ENV | {k: str(v) for k, v in slurm.items()}))
    text = _run_to_the_end(tasks)
    assert all(task.process.returncode == 0 for task in tasks), "\n".join(task.tail() for task in tasks)
    assert "| distributed init (rank 0, world size 2, gloo): env://" in text
    assert len(_iterations(text, 0)) == ITERS_PER_EPOCH
    assert [len(_ap_tables(text, t)) for t in ("bbox", "segm")] == [1, 1]
    assert "Evaluated 4 images" in text  # both tasks' shards merged
    assert len(torch.load(tmp_path / "model_0.pth", weights_only=True)["train_state"]["rng"]) == 2


def test_the_readme_shows_the_commands_these_tests_run():
    """README's multi-node and SLURM commands are the ones above, but for host names, ports and processes per node."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Several nodes, SLURM", 1)[1].split("\n### ", 1)[0]
    commands = re.sub(r"\\\n\s*", "", section)  # continuation lines joined
    node = TORCHRUN_NODE.format(nproc=README_NPROC, host=README_HOST, port=README_PORT)
    slurm = SLURM_TASK.format(host=README_SLURM_HOST, port=README_PORT)
    assert re.search(rf"^{re.escape(node)} ", commands, re.MULTILINE), (
        f"README's multi-node command should launch each node with: {node} ..."
    )
    assert re.search(rf"^srun .* {re.escape(slurm)} ", commands, re.MULTILINE), (
        f"README's SLURM command should run each task as: srun ... {slurm} ..."
    )

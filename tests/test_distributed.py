"""distributed.py over real processes: torchrun's and SLURM's environments, collectives, a rank that dies."""

import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

import distributed
import processes
import utils


def test_collate_fn_keeps_images_and_targets_as_tuples():
    images = [torch.zeros(3, 4, 5), torch.ones(3, 6, 2)]
    targets = [{"image_id": 1}, {"image_id": 2}]
    batched_images, batched_targets = utils.collate_fn(list(zip(images, targets)))
    assert isinstance(batched_images, tuple) and isinstance(batched_targets, tuple)
    assert batched_images[0] is images[0] and batched_images[1] is images[1]
    assert batched_targets == (targets[0], targets[1])


def test_collate_fn_in_a_dataloader():
    data = [(torch.full((1, i + 1, 2), float(i)), {"n": i}) for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=utils.collate_fn)
    batches = list(loader)
    assert len(batches) == 3
    assert [t["n"] for t in batches[2][1]] == [4]
    assert [img.shape[1] for img in batches[0][0]] == [1, 2]


def test_smoothed_value_statistics():
    meter = utils.SmoothedValue(window_size=3)
    assert (meter.median, meter.avg, meter.global_avg, meter.max, meter.value) == (0.0, 0.0, 0.0, 0.0, 0.0)
    for v in [10.0, 1.0, 4.0, 7.0]:
        meter.update(v)
    # the window holds the last three values: 1, 4, 7
    assert meter.median == 4.0
    assert meter.avg == pytest.approx(4.0)
    assert meter.max == 7.0
    assert meter.value == 7.0
    assert meter.global_avg == pytest.approx(22.0 / 4)
    assert meter.count == 4


def test_smoothed_value_weighted_updates():
    meter = utils.SmoothedValue(window_size=10)
    meter.update(2.0, n=3)
    meter.update(6.0, n=1)
    assert meter.global_avg == pytest.approx((2.0 * 3 + 6.0) / 4)
    assert meter.avg == pytest.approx(4.0)  # the window averages values, not weights


def test_smoothed_value_median_of_an_even_window_is_a_middle_value():
    meter = utils.SmoothedValue(window_size=4)
    for v in [3.0, 1.0, 9.0, 5.0]:
        meter.update(v)
    assert meter.median in (3.0, 5.0)
    assert statistics.median_low([3.0, 1.0, 9.0, 5.0]) == meter.median  # torch's median is the lower middle value


def test_smoothed_value_str():
    meter = utils.SmoothedValue(window_size=5, fmt="{value:.1f} {max:.1f} {avg:.2f}")
    meter.update(1.0)
    meter.update(2.0)
    assert str(meter) == "2.0 2.0 1.50"
    assert str(utils.SmoothedValue()) == "0.0000 (0.0000)"


def test_smoothed_value_synchronize_is_a_no_op_without_distributed():
    meter = utils.SmoothedValue()
    meter.update(3.0, n=2)
    meter.synchronize_between_processes()
    assert (meter.count, meter.total) == (2, 6.0)


def test_metric_logger(capsys):
    logger = utils.MetricLogger(delimiter=" | ")
    logger.update(loss=torch.tensor(2.0), lr=0.1)
    logger.update(loss=4.0)
    assert logger.loss.global_avg == pytest.approx(3.0)
    assert logger.lr.value == pytest.approx(0.1)
    with pytest.raises(AttributeError, match="nope"):
        logger.nope  # noqa: B018
    logger.add_meter("custom", utils.SmoothedValue(fmt="{value:.0f}"))
    logger.update(custom=7)
    text = str(logger)
    assert text.startswith("loss: ")
    assert " | custom: 7" in text
    items = list(logger.log_every(list("abcde"), print_freq=2, header="Test:"))
    assert items == list("abcde")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" | ")[1] for line in lines[:-1]] == ["[0/5]", "[2/5]", "[4/5]"]
    assert lines[-1].startswith("Test: Total time:")


def test_log_every_hands_each_printed_lines_numbers_to_on_print(capsys):
    logger = utils.MetricLogger()
    seen = []
    for i, _ in enumerate(
        logger.log_every(range(5), print_freq=2, start=0, on_print=lambda i, numbers: seen.append((i, numbers)))
    ):
        logger.update(loss=float(i), lr=0.5 / (i + 1))
    assert [i for i, _ in seen] == [0, 2, 4]  # the iterations of the printed lines
    for i, numbers in seen:
        assert numbers["loss"] == float(i) and numbers["lr"] == 0.5 / (i + 1)  # this iteration's values, not smoothed
        assert numbers["iter_time"] >= numbers["data_time"] >= 0
        assert ("max_mem_mb" in numbers) == torch.cuda.is_available()
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # the console lines are unchanged


_RANK_SCRIPT = """
import argparse, sys
sys.path.insert(0, {root!r})
import torch, distributed
args = distributed.init_distributed_mode(argparse.Namespace(device="cpu", dist_url="env://"))
losses = distributed.reduce_dict({{"loss": torch.tensor(float(args.rank + 1))}})
gathered = distributed.all_gather({{"rank": args.rank}})
stop = (distributed.any_rank(args.rank == 1), distributed.any_rank(False))
print("rank", args.rank, "of", args.world_size, args.backend, losses["loss"].item(), gathered, "stop", stop,
      flush=True)
distributed.cleanup_distributed()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_ranks(script_text: str, tmp_path: Path, launcher: str = "torchrun") -> list:
    """Two processes running `script_text`, with the environment torchrun or SLURM would give them."""

    script = tmp_path / "rank.py"
    script.write_text(script_text.format(root=str(Path(distributed.__file__).parent)))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_"))}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        if launcher == "torchrun":
            env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        else:
            env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank))
        procs.append(processes.Launched([sys.executable, str(script)], tmp_path / f"rank{rank}", env))
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_init_distributed_mode_from_torchrun_or_slurm_environment(tmp_path, launcher):
    """Two real processes join a gloo group from the environment; collectives give every rank the same answer."""
    procs = _start_two_ranks(_RANK_SCRIPT, tmp_path, launcher)
    outputs = [(p.finish(120).stdout(), p.stderr()) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Only rank 0 prints; it saw the average loss of both ranks and both ranks' objects.
    assert "rank 0 of 2 gloo 1.5 [{'rank': 0}, {'rank': 1}] stop (True, False)" in outputs[0][0]
    assert "rank 1 of" not in outputs[1][0]


_DYING_RANK_SCRIPT = """
import argparse, os, sys, time
sys.path.insert(0, {root!r})
import torch, distributed
args = distributed.init_distributed_mode(argparse.Namespace(device="cpu", dist_url="env://", dist_timeout=5))
if args.rank == 1:
    os._exit(9)  # dies without a word, as a killed or crashed process does
start = time.time()
try:
    distributed.any_rank(False)
except RuntimeError as e:
    assert distributed.is_collective_failure(e), e
    print("rank 0 gave up after", round(time.time() - start), "s:", type(e).__name__, flush=True)
    # as train.py does: exiting with gloo's threads alive can abort ("terminate called ...")
    distributed.cleanup_distributed()
    sys.exit(1)
"""


@pytest.mark.slow
def test_a_dead_rank_does_not_leave_the_others_waiting(tmp_path):
    procs = _start_two_ranks(_DYING_RANK_SCRIPT, tmp_path)
    out, err = procs[0].finish(120).stdout(), procs[0].stderr()
    procs[1].finish(60)
    assert procs[0].returncode == 1, out + err
    assert "rank 0 gave up after" in out
    # not distributed here: a bug, not a dead peer
    assert not distributed.is_collective_failure(RuntimeError("Connection reset"))

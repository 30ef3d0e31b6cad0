"""distributed.py over real processes: torchrun's and SLURM's environments, collectives, a rank that dies."""

import os
import sys
from pathlib import Path

import pytest

import distributed
import processes

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

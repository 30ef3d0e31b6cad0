"""Distributed training's processes: joining the process group that torchrun or SLURM describes, the collectives
the loops use (gather, reduce, any rank), telling a dead peer from a bug, and the device check.

init_distributed_mode() returns what it found (`Processes`) instead of changing train.py's flags.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from errors import UsageError

DEFAULT_DIST_TIMEOUT = 300  # seconds


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _collective_device() -> torch.device:
    """NCCL only moves CUDA tensors; gloo only CPU ones."""
    if is_dist_avail_and_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(data: Any) -> list[Any]:
    """Gather any picklable object from every rank; returns one entry per rank."""
    world_size = get_world_size()
    if world_size == 1:
        return [data]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, data)
    return gathered


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any."""
    if get_world_size() < 2:
        return flag
    value = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


COLLECTIVE_FAILURE_WORDS = ("gloo", "NCCL", "Connection", "connection", "timed out", "Timeout", "timeout")


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` is a collective giving up on a dead or hung peer (gloo raises plain RuntimeErrors)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return (
        isinstance(error, RuntimeError)
        and is_dist_avail_and_initialized()
        and any(w in text for w in COLLECTIVE_FAILURE_WORDS)
    )


def reduce_dict(input_dict: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over all ranks, so every rank logs the same values."""
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.inference_mode():
        names = sorted(input_dict)
        values = torch.stack([input_dict[k].detach().float() for k in names])
        dist.all_reduce(values)
        if average:
            values /= world_size
        return dict(zip(names, values))


def _setup_for_distributed(is_master: bool) -> None:
    """Silence print() on every rank but rank 0, unless called with force=True."""
    import builtins

    builtin_print = builtins.print

    def print(*args, **kwargs):  # noqa: A001 - deliberately shadows the builtin
        force = kwargs.pop("force", False)
        if is_master or force:
            builtin_print(*args, **kwargs)

    builtins.print = print


@dataclass(frozen=True)
class Processes:
    """What init_distributed_mode found: this process's place among the run's processes, and its device."""

    distributed: bool = False
    rank: int = 0
    world_size: int = 1
    gpu: int = 0  # the local rank: this process's GPU on its node
    device: str = "cpu"  # --device, made cuda:<gpu> for a distributed CUDA run
    backend: str | None = None  # nccl for CUDA, gloo for the CPU


def _launcher_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) as torchrun or SLURM give them, or None for a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        rank = int(os.environ["SLURM_PROCID"])
        local = int(os.environ.get("SLURM_LOCALID", rank % max(torch.cuda.device_count(), 1)))
        return rank, int(os.environ["SLURM_NTASKS"]), local
    return None


def init_distributed_mode(args) -> Processes:
    """Join the process group described by torchrun's or SLURM's environment (upstream's name). Reads --device,
    --dist-url and --dist-timeout from `args` and leaves them as they are; returns what it found."""
    found = _launcher_environment()
    if found is None:
        print("Not using distributed mode")
        return Processes(device=str(args.device))
    rank, world_size, gpu = found
    use_cuda = str(args.device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(gpu)
    backend = "nccl" if use_cuda else "gloo"
    processes = Processes(True, rank, world_size, gpu, f"cuda:{gpu}" if use_cuda else str(args.device), backend)
    print(f"| distributed init (rank {rank}, world size {world_size}, {backend}): {args.dist_url}", flush=True)
    # A rank that dies leaves the others blocked in a collective; the timeout bounds that wait.
    timeout = datetime.timedelta(seconds=getattr(args, "dist_timeout", DEFAULT_DIST_TIMEOUT))
    dist.init_process_group(
        backend=backend, init_method=args.dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    dist.barrier()
    _setup_for_distributed(rank == 0)
    return processes


def cleanup_distributed() -> None:
    """Leave the process group; skipping this can abort the process at exit ("terminate called ...")."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


def check_device(device: str) -> None:
    """A UsageError for --device cuda on a machine without a GPU, before any slow work."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")

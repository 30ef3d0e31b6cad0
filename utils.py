"""Shared helpers: console logging, batching, distributed set-up and collectives, safe file I/O.

Nothing here knows about detection; engine.py and train.py build on these pieces.
"""

import datetime
import os
import pickle
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


class UsageError(Exception):
    """A problem the user can fix (a flag, a file); train.py prints it as one line and exits with status 2."""


# ----------------------------------------------------------------------------- logging


class SmoothedValue:
    """Tracks a series of values; reports a windowed median/average and the global average."""

    def __init__(self, window_size: int = 20, fmt: str | None = None):
        self.deque: deque[float] = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value: float, n: int = 1) -> None:
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum count and total over ranks (the window stays local)."""
        if not is_dist_avail_and_initialized():
            return
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        self.count, self.total = int(t[0].item()), t[1].item()

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.deque)).median().item()) if self.deque else 0.0

    @property
    def avg(self) -> float:
        return sum(self.deque) / len(self.deque) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def max(self) -> float:
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value)


class MetricLogger:
    """Collects named SmoothedValues and prints a progress line every `print_freq` iterations."""

    def __init__(self, delimiter: str = "  "):
        self.meters: defaultdict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs: float | torch.Tensor) -> None:
        for name, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[name].update(float(value))

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        self.meters[name] = meter

    def __getattr__(self, name: str) -> SmoothedValue:
        meters = self.__dict__.get("meters", {})
        if name in meters:
            return meters[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def log_every(self, iterable: Iterable, print_freq: int, header: str = "") -> Iterator:
        """Yield from `iterable`, printing ETA, losses, iteration/data time and CUDA memory as it goes."""
        total = len(iterable)
        width = len(str(total))
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        start = end = time.time()
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                parts = [header, f"[{i:{width}d}/{total}]", f"eta: {eta}", str(self), f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available():
                    parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")
                print(self.delimiter.join(p for p in parts if p))
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        print(f"{header} Total time: {elapsed} ({(time.time() - start) / max(total, 1):.4f} s / it)")


# ----------------------------------------------------------------------------- batching


def collate_fn(batch: list[tuple[Any, Any]]) -> tuple[tuple, ...]:
    """Keep images and targets as tuples: detection images differ in size and cannot be stacked."""
    return tuple(zip(*batch))


class InferenceSampler(torch.utils.data.Sampler[int]):
    """This rank's share of the indices (rank, rank + world_size, ...), in order and without padding:
    unlike DistributedSampler, no image is evaluated twice."""

    def __init__(self, dataset_size: int, rank: int | None = None, world_size: int | None = None):
        rank = get_rank() if rank is None else rank
        world_size = get_world_size() if world_size is None else world_size
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- distributed


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


def init_distributed_mode(args) -> None:
    """Join the process group described by torchrun's or SLURM's environment; sets args.distributed, rank, gpu."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        args.rank = int(os.environ["RANK"])
        args.world_size = int(os.environ["WORLD_SIZE"])
        args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        args.rank = int(os.environ["SLURM_PROCID"])
        args.world_size = int(os.environ["SLURM_NTASKS"])
        args.gpu = int(os.environ.get("SLURM_LOCALID", args.rank % max(torch.cuda.device_count(), 1)))
    else:
        print("Not using distributed mode")
        args.distributed = False
        args.rank, args.gpu = 0, 0
        return

    args.distributed = True
    use_cuda = str(args.device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
    args.dist_backend = "nccl" if use_cuda else "gloo"
    print(f"| distributed init (rank {args.rank}, world size {args.world_size}, {args.dist_backend}): {args.dist_url}", flush=True)
    dist.init_process_group(backend=args.dist_backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank)
    dist.barrier()
    _setup_for_distributed(args.rank == 0)


def cleanup_distributed() -> None:
    """Leave the process group; skipping this can abort the process at exit ("terminate called ...")."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- files


def save_on_master(obj: Any, path: str | Path) -> None:
    """Save from rank 0 only, atomically: a crash mid-write never leaves a torn file at `path`."""
    if not is_main_process():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_file(path: str | Path, what: str, flag: str) -> Any:
    """torch.load with weights_only=True; any failure becomes a UsageError naming the file and flag."""
    path = Path(path)
    if not path.is_file():
        hint = " (a file path: nothing is downloaded)" if "Weights." in str(path) else ""
        raise UsageError(f"{flag}: {what} file {path} does not exist{hint}; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: the same advice whatever the library raised
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            # Pickled objects (such as the torchvision reference's argparse.Namespace) could run code: never unpickled here.
            raise UsageError(
                f"{flag}: {path} holds pickled Python objects, which weights_only loading refuses to run; if you trust it, keep only "
                f"its weights: python -c \"import torch; c = torch.load('{path}', weights_only=False); "
                f"torch.save({{'model': c['model']}}, 'weights.pth')\" and pass weights.pth to --weights"
            ) from None
        raise UsageError(
            f"{flag}: {path} is not a file written by torch.save ({type(e).__name__}: {_short_reason(e)}); pass a {what}"
        ) from None


def _short_reason(error: Exception) -> str:
    """The telling line of a library's error message (torch.load's run to a dozen lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "Unsupported" in line] or lines
    return telling[0][:200] if telling else type(error).__name__

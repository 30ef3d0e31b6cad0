"""Shared helpers: the errors a user can fix, console meters, the metrics log (metrics.jsonl, TensorBoard),
distributed set-up and collectives, and small helpers (batching, atomic file writes).

Nothing here knows about detection; the other modules build on these pieces.
"""

import argparse
import datetime
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


class UsageError(Exception):
    """A problem the user can fix (a flag, a file); train.py prints it as one line and exits with status 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, whose errors (an unknown flag, a value of the wrong type) are one "error:" line and exit status 2,
    not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python {self.prog} --help lists the flags)\n")


class DataError(UsageError):
    """A problem with the dataset's files, reported as one line naming the file.

    Raised inside a DataLoader worker, it reaches the main process re-raised by torch with the
    worker's whole traceback as its message; the constructor keeps only the original line, so the
    user still reads one line (train.py catches it as a UsageError).
    """

    def __init__(self, message: str):
        if message.startswith(f"Caught {type(self).__name__}") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


def warn(message: str) -> None:
    """One "warning:" line on stderr: in distributed runs print() is silenced on all ranks but 0, and any rank can
    meet what it warns of (a bad file)."""
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


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
        return self.fmt.format(
            median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value
        )


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

    def log_every(
        self,
        iterable: Iterable,
        print_freq: int,
        header: str = "",
        start: int = 0,
        on_print: Callable[[int, dict[str, float]], None] | None = None,
        iterations_after: int | None = None,
    ) -> Iterator:
        """Yield from `iterable`, printing ETA, losses, iteration/data time and CUDA memory as it goes.
        `start` numbers the lines of an epoch resumed after that many iterations; `iterations_after` (those of the
        epochs to come) adds the whole run's ETA. With each line,
        on_print(iteration, numbers) gets the numbers behind it, unsmoothed: every meter's latest value,
        this iteration's `iter_time` and `data_time` (seconds) and, with CUDA, `max_mem_mb`."""
        remaining = len(iterable)
        total = start + remaining
        width = len(str(total))
        iter_time, data_time = SmoothedValue(fmt="{avg:.4f}"), SmoothedValue(fmt="{avg:.4f}")
        started = end = time.time()
        for i, obj in enumerate(iterable, start=start):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                if iterations_after is not None:  # the whole run's, as detectron2 shows it: evaluations left out
                    run_eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1 + iterations_after)))
                    eta = f"{eta} (run {run_eta})"
                parts = [
                    header,
                    f"[{i:{width}d}/{total}]",
                    f"eta: {eta}",
                    str(self),
                    f"time: {iter_time}",
                    f"data: {data_time}",
                ]
                max_mem_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
                if max_mem_mb is not None:
                    parts.append(f"max mem: {max_mem_mb:.0f} MB")
                print(self.delimiter.join(p for p in parts if p))
                if on_print is not None:
                    numbers = {name: meter.value for name, meter in self.meters.items()}
                    numbers |= {"iter_time": iter_time.value, "data_time": data_time.value}
                    on_print(i, numbers if max_mem_mb is None else numbers | {"max_mem_mb": max_mem_mb})
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - started))
        print(f"{header} Total time: {elapsed} ({(time.time() - started) / max(remaining, 1):.4f} s / it)")


# ----------------------------------------------------------------------------- metrics log

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_HINT = "needs the tensorboard package: pip install tensorboard (or pip install -r requirements-extras.txt)"


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities become None (JSON null): strict JSON readers (jq, JavaScript) reject NaN and Infinity."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """Appends records to a JSON Lines file, one object per line, flushed at once: a run killed at any
    moment (kill -9 included) keeps every line written before. The file is opened at the first write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    def _ends_mid_line(self) -> bool:
        """Whether the file's last line was cut off (an earlier run killed while writing it)."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def _open(self) -> None:
        ends_mid_line = self._ends_mid_line()
        self._file = open(self.path, "a", encoding="utf-8")
        if ends_mid_line:  # start on a line of our own; readers skip the cut-off one
            self._file.write("\n")

    def write(self, record: dict) -> None:
        if self._file is None:
            self._open()
        self._file.write(json.dumps(_finite_or_none(record)) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def tensorboard_available() -> bool:
    """Whether torch.utils.tensorboard can be imported: the tensorboard package is an optional extra."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _scalars(values: dict, prefix: str) -> Iterator[tuple[str, float]]:
    """(tag, value) for every number in `values`, nested dicts giving "prefix/key/subkey" tags."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _scalars(value, f"{prefix}/{key}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}/{key}", float(value)


class TensorBoardWriter:
    """Writes a record's numbers as TensorBoard scalars tagged "<type>/<key>" (train/lr, eval/bbox/AP) at step
    record["global_iteration"], into an event file created at the first write. `first_step` is where this
    run starts: what an earlier, killed run logged from there on is hidden (SummaryWriter's purge_step),
    since this run logs those steps again."""

    BOOKKEEPING = ("type", "epoch", "iteration", "global_iteration", "timestamp")

    def __init__(self, log_dir: str | Path, first_step: int = 0):
        self.log_dir, self.first_step = Path(log_dir), first_step
        self._writer = None

    def write(self, record: dict) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is an optional extra

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.first_step)
        numbers = {k: v for k, v in record.items() if k not in self.BOOKKEEPING}
        for tag, value in _scalars(numbers, record["type"]):
            self._writer.add_scalar(
                tag, value, global_step=record["global_iteration"], walltime=record.get("timestamp")
            )
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MetricsWriter:
    """The run's metrics log: records appended to <output_dir>/metrics.jsonl and, with `tensorboard`, the same
    numbers to <output_dir>/tensorboard/. Only rank 0 writes; without an output_dir nothing is written.
    Use it as a context manager; both files are opened at the first record."""

    def __init__(self, output_dir: str | Path | None, tensorboard: bool = False, first_step: int = 0):
        self._sinks: list[JsonlWriter | TensorBoardWriter] = []
        if output_dir and is_main_process():
            self._sinks.append(JsonlWriter(Path(output_dir) / METRICS_FILE))
            if tensorboard:
                self._sinks.append(TensorBoardWriter(Path(output_dir) / TENSORBOARD_DIR, first_step))

    def write(self, record: dict) -> None:
        for sink in self._sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ----------------------------------------------------------------------------- batching


def collate_fn(batch: list[tuple[Any, Any]]) -> tuple[tuple, ...]:
    """Keep images and targets as tuples: detection images differ in size and cannot be stacked."""
    return tuple(zip(*batch))


# ----------------------------------------------------------------------------- distributed


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
    print(
        f"| distributed init (rank {args.rank}, world size {args.world_size}, {args.dist_backend}): {args.dist_url}",
        flush=True,
    )
    # A rank that dies leaves the others blocked in a collective; the timeout bounds that wait.
    timeout = datetime.timedelta(seconds=getattr(args, "dist_timeout", DEFAULT_DIST_TIMEOUT))
    dist.init_process_group(
        backend=args.dist_backend,
        init_method=args.dist_url,
        world_size=args.world_size,
        rank=args.rank,
        timeout=timeout,
    )
    dist.barrier()
    _setup_for_distributed(args.rank == 0)


def cleanup_distributed() -> None:
    """Leave the process group; skipping this can abort the process at exit ("terminate called ...")."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash right after it cannot bring back the old name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported here (Windows); the rename itself is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(f) -> None:
    """Make what was written to the open file `f` durable."""
    os.fsync(f.fileno())


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp) on a temporary file beside `path`, then rename it over `path`: at every moment
    `path` is either the old complete file or the new complete one."""
    tmp = path.with_name(f".{path.name}.tmp")  # one fixed name: a write cut off by kill -9 is overwritten next time
    # A temporary file left by a killed save may be a hard link to an epoch file: writing into it would
    # change that file too, so it goes first.
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def check_device(device: str) -> None:
    """A UsageError for --device cuda on a machine without a GPU, before any slow work."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")


def save_json(obj: Any, path: str | Path) -> Path:
    """Write `obj` as JSON to `path`, atomically (a reader never sees half a file); returns the path."""
    path = Path(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(path, write)
    return path


def link_or_copy(source: Path, tmp: Path) -> None:
    """A second name for a file just written: a hard link costs nothing; copy where links are not supported."""
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def short_reason(error: Exception) -> str:
    """The telling line of a library's error message (torch.load's run to a dozen lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "Unsupported" in line] or lines
    return telling[0][:200] if telling else type(error).__name__

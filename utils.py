"""Shared helpers: console logging, the metrics log (metrics.jsonl, TensorBoard), batching and resumable
sampling, distributed set-up and collectives, stop signals, RNG state, and safe file I/O (atomic checkpoints).

Nothing here knows about detection; engine.py and train.py build on these pieces.
"""

import contextlib
import datetime
import json
import math
import os
import pickle
import random
import re
import shutil
import signal
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
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

    def log_every(
        self,
        iterable: Iterable,
        print_freq: int,
        header: str = "",
        start: int = 0,
        on_print: Callable[[int, dict[str, float]], None] | None = None,
    ) -> Iterator:
        """Yield from `iterable`, printing ETA, losses, iteration/data time and CUDA memory as it goes.
        `start` numbers the lines of an epoch resumed after that many iterations. With each line,
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
                parts = [header, f"[{i:{width}d}/{total}]", f"eta: {eta}", str(self), f"time: {iter_time}", f"data: {data_time}"]
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
            self._writer.add_scalar(tag, value, global_step=record["global_iteration"], walltime=record.get("timestamp"))
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


# ----------------------------------------------------------------------------- resumable training order

_MIX = 0x9E3779B97F4A7C15  # an odd 64-bit constant: spreads (seed, epoch, index) over distinct generator seeds


def _mixed_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * _MIX + part + 1) % 2**63
    return value


class TrainSampler(torch.utils.data.Sampler[int]):
    """A new shuffle every epoch, drawn from (seed, epoch) alone, and this rank's share of it.

    Like DistributedSampler, the order is padded (by repeating its start) to a multiple of the
    world size and dealt out rank, rank + world_size, ...; unlike RandomSampler, a resumed run
    sees exactly the order the interrupted one saw. `state_dict()` records the epoch's order.
    """

    def __init__(self, dataset_size: int, seed: int, rank: int | None = None, world_size: int | None = None):
        self.dataset_size = dataset_size
        self.seed = seed
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        self.epoch = 0
        self._saved_order: torch.Tensor | None = None  # an order read from a checkpoint, for its epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._saved_order = None
        self.epoch = epoch

    def epoch_order(self) -> torch.Tensor:
        """Every rank's indices for this epoch, before sharding."""
        if self._saved_order is not None:
            return self._saved_order
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed, self.epoch))
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        padded = order.repeat(-(-len(self) * self.world_size // max(len(order), 1)))[: len(self) * self.world_size]
        return iter(padded[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return -(-self.dataset_size // self.world_size)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "order": self.epoch_order()}

    def load_state_dict(self, state: dict) -> bool:
        """Take the seed and the saved epoch's order; an order for another dataset size is dropped (returns False)."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        order = state["order"]
        fits = len(order) == self.dataset_size
        self._saved_order = order.long() if fits else None
        return fits


class ResumableBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler for training: starts an epoch after its first `start` batches (a
    resumed epoch) and pairs each index with a seed drawn from (seed, epoch, index).

    SeededDataset seeds each sample's random augmentation with that seed, so a sample is
    augmented the same way whichever DataLoader worker loads it and wherever the epoch resumed.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], seed: int):
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.start:
                yield [(index, _mixed_seed(self.seed, self.epoch, index)) for index in batch]

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.start, 0)


class SeededDataset(torch.utils.data.Dataset):
    """dataset[(index, seed)] = (seed, the wrapped dataset[index]), made with torch's CPU generator
    seeded by `seed` (and restored afterwards: in the main process, training's own random stream
    is left untouched). SeededCollate batches such pairs."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return seed, self.dataset[index]


class SeededCollate:
    """Batches SeededDataset's (seed, sample) pairs with `collate_fn`, under a seed drawn from the
    samples' seeds: batch-level random augmentation (copy-paste) resumes exactly too."""

    def __init__(self, collate_fn=collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, batch: list[tuple[int, Any]]) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(_mixed_seed(*(seed for seed, _ in batch)))
            return self.collate_fn([sample for _, sample in batch])


def rng_state() -> dict:
    """This process's random generators (python, numpy, torch CPU and CUDA) as plain data."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- stop signals

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """Remembers that SIGTERM or SIGUSR1 (SLURM's --signal warning) arrived, so that training can
    finish its iteration, save and exit instead of dying mid-step."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def received(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            sys.stderr.write(f"Received {signal.Signals(signum).name}: stopping after this iteration\n")
        self.signum = signum


@contextlib.contextmanager
def catching_stop_signals() -> Iterator[StopSignal]:
    """Install StopSignal's handler for SIGTERM and SIGUSR1 (main thread only); restore the old ones on exit."""
    stop = StopSignal()
    previous = {s: signal.signal(s, stop._handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    return isinstance(error, RuntimeError) and is_dist_avail_and_initialized() and any(w in text for w in COLLECTIVE_FAILURE_WORDS)


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
    # A rank that dies leaves the others blocked in a collective; the timeout bounds that wait.
    timeout = datetime.timedelta(seconds=getattr(args, "dist_timeout", DEFAULT_DIST_TIMEOUT))
    dist.init_process_group(
        backend=args.dist_backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank, timeout=timeout
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


def _replace_atomically(path: Path, write) -> None:
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


def _write_torch_file(obj: Any, tmp: Path) -> None:
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


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

    _replace_atomically(path, write)
    return path


def _link_or_copy(source: Path, tmp: Path) -> None:
    """A second name for a file just written: a hard link costs nothing; copy where links are not supported."""
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def save_on_master(obj: Any, path: str | Path) -> None:
    """Save from rank 0 only, atomically: a crash mid-write never leaves a torn file at `path`."""
    if is_main_process():
        _replace_atomically(Path(path), lambda tmp: _write_torch_file(obj, tmp))


EPOCH_FILE = re.compile(r"model_(\d+)\.pth")


def save_checkpoint(checkpoint: dict, output_dir: str | Path, epoch: int | None = None, keep: int | None = None) -> Path:
    """Write `checkpoint` to <output_dir>/checkpoint.pth, atomically, from rank 0.

    With an `epoch` (the end of one), it is written as model_{epoch}.pth first and checkpoint.pth
    becomes a second name for it; then only the newest `keep` model_*.pth files are kept.
    Mid-epoch checkpoints (no epoch) replace checkpoint.pth alone. Returns checkpoint.pth's path.
    """
    output_dir = Path(output_dir)
    latest = output_dir / "checkpoint.pth"
    if not is_main_process():
        return latest
    if epoch is None:
        save_on_master(checkpoint, latest)
        return latest
    epoch_file = output_dir / f"model_{epoch}.pth"
    save_on_master(checkpoint, epoch_file)
    _replace_atomically(latest, lambda tmp: _link_or_copy(epoch_file, tmp))
    if keep is not None:
        _remove_old_epoch_files(output_dir, keep)
    return latest


def _remove_old_epoch_files(output_dir: Path, keep: int) -> None:
    epochs = sorted(int(m.group(1)) for p in output_dir.iterdir() if (m := EPOCH_FILE.fullmatch(p.name)))
    for old in epochs[: max(len(epochs) - keep, 0)]:
        (output_dir / f"model_{old}.pth").unlink(missing_ok=True)


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
            f"{flag}: {path} is not a file written by torch.save ({type(e).__name__}: {short_reason(e)}); pass a {what}"
        ) from None


def short_reason(error: Exception) -> str:
    """The telling line of a library's error message (torch.load's run to a dozen lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "Unsupported" in line] or lines
    return telling[0][:200] if telling else type(error).__name__

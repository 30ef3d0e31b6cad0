"""Upstream's utils: console meters (SmoothedValue, MetricLogger), the detection collate function, and the names of
upstream's distributed helpers, which live in distributed.py.

The roles that grew beside them have their own modules: errors.py (what a user can fix), files.py (atomic writes),
metrics_log.py (metrics.jsonl, TensorBoard), distributed.py (processes and collectives).
"""

import datetime
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

# upstream's public names (references/detection/utils.py), for code written against them
from distributed import (  # noqa: F401
    _collective_device,
    all_gather,
    get_rank,
    get_world_size,
    init_distributed_mode,
    is_dist_avail_and_initialized,
    is_main_process,
    reduce_dict,
)


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


def collate_fn(batch: list[tuple[Any, Any]]) -> tuple[tuple, ...]:
    """Keep images and targets as tuples: detection images differ in size and cannot be stacked."""
    return tuple(zip(*batch))

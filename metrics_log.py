"""The run's metrics log: records appended to metrics.jsonl (JSON Lines, crash-safe) and, optionally, the same numbers
as TensorBoard scalars. Only rank 0 writes.

The records, each a JSON object with a "type" and a "timestamp" (engine.py builds them; plots.py reads them back):
  run       first, once per train.py invocation: "command" (its argv, null from Python) and "flags" (as recorded)
  train     every --print-freq iterations: epoch, iteration, global_iteration, lr, loss, losses and timings
  eval      after an epoch's evaluation: epoch, global_iteration and the evaluator's numbers by group (bbox, segm...)
  test      a --test-only evaluation: "weights" (the file), its "epoch" if known, and the numbers as in eval
  analysis  the error analysis of the last epoch's evaluation ("of": "eval") or of --test-only's ("test"):
            analysis.analyze_evaluation's numbers, confusion matrices and worst images
Only train and eval records go to TensorBoard.
"""

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed import is_main_process

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
    TYPES = ("train", "eval")  # the others hold no scalars to plot against training's steps

    def __init__(self, log_dir: str | Path, first_step: int = 0):
        self.log_dir, self.first_step = Path(log_dir), first_step
        self._writer = None

    def write(self, record: dict) -> None:
        if record["type"] not in self.TYPES:
            return
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


def evaluated_epochs(path: str | Path, since: float = 0.0) -> set[int]:
    """The epochs whose evaluation records metrics.jsonl at `path` holds, written at `since` (a time.time()) or later.
    A missing file holds none; a line cut off by a killed run is skipped."""
    path = Path(path)
    if not path.is_file():
        return set()
    epochs = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("type") == "eval" and (record.get("timestamp") or 0) >= since:
                epochs.add(record.get("epoch"))
    return epochs

"""Atomic file writes: a reader, or a run killed at any moment, sees the old complete file or the new one, never half
of one (checkpoints, predictions, the metrics of a run)."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


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

"""The device check's frame: the plan of sizes, the context the sections share, a section's table (`Section`), running
each section on its own (a failure or too little time left is recorded in its table, the others still run), and the
report (`gpu_check.md`, `gpu_check.json`), rewritten after every section so that a run cut short keeps what it
measured."""

import contextlib
import gc
import io
import json
import math
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from device_check import ROOT

MODEL = "maskrcnn_resnet50_fpn"  # on a GPU; a dry run trains the tests' small one (tests/tiny_models.py)
DRY_RUN_MODEL = "maskrcnn_tiny_fpn"
SKIPPED_NO_CUDA = "skipped (no CUDA)"
# The demo's lighter R-CNN sampling (README, "The demo"): tiny images need no 2000 proposals, nor 100 detections.
TINY_MODEL_KWARGS = [
    ("box_batch_size_per_image", 32), ("rpn_pre_nms_top_n_train", 100), ("rpn_post_nms_top_n_train", 100),
    ("rpn_pre_nms_top_n_test", 100), ("rpn_post_nms_top_n_test", 100), ("box_detections_per_img", 20),
]  # fmt: skip


def register_dry_run_model() -> None:
    """Register the tests' small models with torchvision (importing tests/tiny_models.py does), for the sections that
    build the dry run's model in this process; train.py's runs get them through tests/tiny_models.py."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models  # noqa: F401


@dataclass
class Plan:
    """The model, sizes and iteration counts: COCO's on a GPU, tiny ones for --dry-run."""

    model: str  # the architecture every section builds
    # what torchrun runs: train.py, or (a dry run's small model) the script that registers the model, then train.py
    train_script: tuple[str, ...]
    backbone_file: bool  # a stand-in ImageNet ResNet-50 at <data-path>/resnet50.pth, train.py's default (else none)
    train_env: dict[str, str]  # for train.py's runs (the small model's steps paced, so that SIGTERM lands mid-epoch)
    image_size: tuple[int, int]  # (width, height) of the landscape images; every third is portrait
    min_size: int | None  # the model's resize (None: the model's own, 800 / 1333)
    max_size: int | None
    model_kwargs: list[tuple[str, Any]]
    num_classes: int  # of the in-process models (COCO's 91 on a GPU)
    train_images: int  # of the dataset that train.py, the throughput batches and evaluation use
    val_images: int
    loader_distinct: int  # distinct JPEGs of the loader's dataset, each listed loader_repeat times
    loader_repeat: int
    batch_sizes: tuple[int, ...]
    warmup: int  # iterations each loop runs before it is timed
    max_iterations: int  # timed iterations per run, at most
    repeats: int  # timed runs of each loop (alternating)
    config_seconds: float  # for one (batch, precision) configuration, at most
    workers: tuple[int, ...]
    loader_seconds: float
    sync_iterations: int
    amp_iterations: int
    run_timeout: float  # seconds per train.py launch
    budget: float  # seconds for the whole run


@dataclass
class Section:
    """One section's table (columns given as "a | b | c"), its numbers (records, unrounded) and notes."""

    name: str
    header: str
    rows: list[list[str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    seconds: float = 0.0
    error: str | None = None
    log: str = ""

    @property
    def columns(self) -> list[str]:
        return self.header.split(" | ")

    def add(self, cells: list, **record) -> None:
        """A row (missing cells left empty) and its record."""
        cells = [_cell(c) for c in cells]
        self.rows.append(cells + [""] * (len(self.columns) - len(cells)))
        self.records.append(record)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def failure(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    return f"failed: {type(error).__name__}: {first[:300]}"


@dataclass
class Context:
    """What the sections share: the plan, the device, the inputs, the deadline, and results other sections use."""

    plan: Plan
    device: torch.device
    dry_run: bool
    work: Path
    deadline: float
    threads: int | None = None  # torch threads here and in train.py's runs (None: torch's default)
    data_root: Path | None = None  # train.py's dataset; also the throughput batches and the evaluation images
    loader_root: Path | None = None
    backbone_path: Path | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def slug(name: str) -> str:
    return name.strip().lower().replace(" ", "-")


def run_section(ctx: Context, name: str, function: Callable[[Context], Section], needs: float) -> Section:
    """One section, its output captured; too little time left, or an exception, is what its table says."""
    start = time.monotonic()
    if ctx.remaining() < needs:
        section = Section(name, "status", status=f"skipped (time budget: {ctx.remaining():.0f} s left)")
        section.add([section.status])
        return section
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            section = function(ctx)
    except Exception as e:  # noqa: BLE001 - a section that fails does not lose the others' results
        section = Section(name, "status", status="failed", error=traceback.format_exc())
        section.add([failure(e)])
        free_memory()
    section.seconds = time.monotonic() - start
    if section.status != "ok" and not section.log:
        section.log = captured.getvalue()[-3000:]
    return section


def commit() -> str:
    """The commit the check runs at, and whether the tree has changes beyond it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        return (git("rev-parse", "HEAD") or "unknown") + (" (with uncommitted changes)" if git("status", "-s") else "")
    except OSError:
        return "unknown"


def markdown(header: dict, sections: list[Section], order: list[str]) -> str:
    """The report: the header, then every section in `order` (one not run says so)."""
    lines = ["# GPU check", "", f"Machine: {header['machine']}", "", f"Commit: {header['commit']}", "",
             f"Run: {header['mode']}; {header['seconds']:.0f} s of a {header['budget']:.0f} s budget.", ""]  # fmt: skip
    by_name = {s.name: s for s in sections}
    for name in order:
        section = by_name.get(name)
        if section is None:
            lines += [f"## {name}", "", "not run", ""]
            continue
        lines += [f"## {name}", "", f"{section.status} ({section.seconds:.1f} s)", ""]
        lines += ["| " + " | ".join(section.columns) + " |", "|" + "---|" * len(section.columns)]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in section.rows
        ]
        lines += [""] + [f"- {note}" for note in section.notes] + ([""] if section.notes else [])
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON-ready: non-finite floats as strings, tuples as lists, keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, bool)) or value is None else str(value)


def write_results(out: Path, header: dict, sections: list[Section], order: list[str]) -> None:
    """gpu_check.md (the tables, in `order`) and gpu_check.json (the same numbers, unrounded) in `out`."""
    (out / "gpu_check.md").write_text(markdown(header, sections, order) + "\n")
    data = {**header, "sections": [vars(s) | {"columns": s.columns} for s in sections]}
    (out / "gpu_check.json").write_text(json.dumps(_plain(data), indent=1) + "\n")


# (name, function, seconds it needs at least on a GPU, in a dry run)
SectionSpec = tuple[str, Callable[[Context], Section], float, float]


def run_sections(
    ctx: Context, specs: list[SectionSpec], chosen: set[str] | None, out: Path, header: dict, order: list[str]
) -> list[Section]:
    """The sections in the order of `specs` (only the `chosen` ones by slug, and the environment), the results
    written to `out` after each."""
    started = ctx.deadline - header["budget"]
    sections: list[Section] = []
    for name, function, needs_gpu, needs_dry in specs:
        if chosen is not None and slug(name) not in chosen and name != "environment":
            continue
        print(f"[gpu_check] {name} ...", flush=True)
        section = run_section(ctx, name, function, needs_dry if ctx.dry_run else needs_gpu)
        sections.append(section)
        header["seconds"] = time.monotonic() - started
        write_results(out, header, sections, order)
        print(f"[gpu_check] {name}: {section.status} ({section.seconds:.1f} s)", flush=True)
    return sections

"""The device check: what a first lease of a GPU should measure, prepared and dry-run on the CPU so that the lease's
minutes go to measuring, not debugging (issue #14).

    python benchmarks/gpu_check.py --out output/gpu_check            # on one GPU: at most 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check    # the same code on the CPU, tiny sizes (CI)
    python benchmarks/gpu_check.py --out DIR --sections evaluation,fp16-amp   # a rerun of some sections

It writes its own inputs (COCO-style synthetic images of COCO's size, about 640x480, which the model resizes to
800/1333, and a ResNet-50 backbone file with calibrated BatchNorm statistics, so that the losses are sane), then runs
each section below on its own: a section that fails, or finds too little of the time budget left, records that in its
table and the others still run. `gpu_check.md` (markdown tables, ours beside the baseline as a ratio) and
`gpu_check.json` (the same numbers, unrounded) are rewritten after every section, so a run cut short keeps what it
measured.

- environment: torch, CUDA, cuDNN, NCCL, the GPU and its memory.
- training throughput: maskrcnn_resnet50_fpn, batch 2 and 8, fp32 and --amp; images/s and peak memory of
  engine.train_one_epoch beside a bare forward/backward/step loop over the same in-memory batches, warm-up excluded.
- host-device syncs: per training iteration, ours against the bare loop (torch.cuda.set_sync_debug_mode, and the
  profiler's cuda*Synchronize calls and device-to-host copies).
- data loader: our loader alone (decode, targets, flip, batches; -j 4 and -j 8) against the training images/s.
- evaluation: model and post-processing (mask pasting and RLE encoding on the device) time per image, and the 12+12
  AP of one checkpoint on the same images evaluated on CUDA and on the CPU.
- torchrun exact resume: train.py under `torchrun --nproc_per_node=1` (NCCL), SIGTERM mid-epoch, --auto-resume,
  and the resumed run compared with an uninterrupted one (CUDA random states restored).
- fp16 AMP: 100 iterations under autocast and GradScaler: the loss stays finite, few steps are skipped.

With --dry-run everything runs on the CPU at 96-128 px for a few iterations (gloo instead of NCCL); what needs CUDA
is reported as "skipped (no CUDA)". Scripts import modules, never each other: train.py runs as a subprocess.
"""

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import report  # benchmarks/report.py, beside this script
import torch
import torchvision
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import checkpoint as ckpt  # noqa: E402
import models  # noqa: E402
import synthetic  # noqa: E402
import utils  # noqa: E402
from coco_utils import get_coco  # noqa: E402
from engine import StopSignal, coco_evaluator_for, evaluate, train_one_epoch  # noqa: E402
from samplers import build_data_loaders  # noqa: E402
from transforms import get_transform  # noqa: E402

MODEL = "maskrcnn_resnet50_fpn"
SKIPPED_NO_CUDA = "skipped (no CUDA)"
SYNC_WARNING = "synchronizing CUDA operation"
TRAIN_LINE = re.compile(r"Epoch: \[(\d+)\]\s+\[\s*(\d+)/(\d+)\]")
# The demo's lighter R-CNN sampling (README, "The demo"): tiny images need no 2000 proposals, nor 100 detections.
TINY_MODEL_KWARGS = [
    ("box_batch_size_per_image", 32), ("rpn_pre_nms_top_n_train", 100), ("rpn_post_nms_top_n_train", 100),
    ("rpn_pre_nms_top_n_test", 100), ("rpn_post_nms_top_n_test", 100), ("box_detections_per_img", 20),
]  # fmt: skip
CATEGORIES = {1: ("disc", (225, 45, 45)), 2: ("square", (40, 205, 70)), 3: ("triangle", (60, 90, 240))}


@dataclass
class Plan:
    """Sizes and iteration counts: COCO's on a GPU, tiny ones for --dry-run."""

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


GPU_PLAN = Plan(
    image_size=(640, 480), min_size=None, max_size=None, model_kwargs=[], num_classes=91, train_images=40,
    val_images=16, loader_distinct=32, loader_repeat=64, batch_sizes=(2, 8), warmup=3, max_iterations=20, repeats=2,
    config_seconds=28, workers=(4, 8), loader_seconds=10, sync_iterations=3, amp_iterations=100, run_timeout=150,
    budget=420,
)  # fmt: skip
DRY_PLAN = Plan(
    image_size=(128, 96), min_size=96, max_size=128, model_kwargs=TINY_MODEL_KWARGS, num_classes=4, train_images=8,
    val_images=4, loader_distinct=8, loader_repeat=6, batch_sizes=(2,), warmup=1, max_iterations=2, repeats=1,
    config_seconds=20, workers=(0, 2), loader_seconds=5, sync_iterations=1, amp_iterations=2, run_timeout=180,
    budget=600,
)  # fmt: skip


# ----------------------------------------------------------------------------- inputs


def _shape(category_id: int, cx: float, cy: float, r: float) -> list[float]:
    if category_id == 1:
        angles = [math.pi * k / 12 for k in range(24)]
        return [c for a in angles for c in (cx + r * math.cos(a), cy + r * math.sin(a))]
    if category_id == 2:
        return [cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r]
    return [cx, cy - r, cx + r, cy + r, cx - r, cy + r]


def _draw_image(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, list[dict]]:
    """A noisy background and 3-8 filled shapes that do not overlap, with their polygon annotations."""
    pixels = rng.integers(15, 80, 3)[None, None, :] + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    wanted, placed, annotations = int(rng.integers(3, 9)), [], []
    for _ in range(60):
        if len(placed) == wanted:
            break
        r = float(rng.uniform(0.05, 0.16) * min(width, height))
        cx, cy = float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1))
        if any(abs(cx - x) < r + s + 2 and abs(cy - y) < r + s + 2 for x, y, s in placed):
            continue
        placed.append((cx, cy, r))
        category_id = int(rng.integers(1, 4))
        polygon = [round(v, 2) for v in _shape(category_id, cx, cy, r)]
        draw.polygon(polygon, fill=tuple(int(c) + int(rng.integers(-20, 21)) for c in CATEGORIES[category_id][1]))
        xs, ys = polygon[0::2], polygon[1::2]
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))))
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotations.append(
            {"segmentation": [polygon], "bbox": bbox, "area": area, "iscrowd": 0, "category_id": category_id}
        )
    return image, annotations


def write_dataset(root: Path, splits: dict[str, tuple[int, int]], size: tuple[int, int], seed: int = 0) -> Path:
    """COCO's layout under `root`: per split, `distinct` images of `size` (every third one portrait), each listed
    `repeat` times (under a new image id each time), with their instance annotations."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, (name, _) in CATEGORIES.items()]
    for split, (distinct, repeat) in splits.items():
        folder = root / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        drawn = []
        for k in range(distinct):
            width, height = size if k % 3 != 2 else size[::-1]
            image, annotations = _draw_image(rng, width, height)
            file_name = f"{k:012d}.jpg"
            image.save(folder / file_name, quality=90)
            drawn.append(({"file_name": file_name, "width": width, "height": height}, annotations))
        images, annotations = [], []
        for copy_index in range(repeat):
            for k, (info, anns) in enumerate(drawn):
                image_id = 1 + copy_index * distinct + k
                images.append({"id": image_id, **info})
                annotations += [{**a, "id": len(annotations) + i + 1, "image_id": image_id} for i, a in enumerate(anns)]
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def write_calibrated_resnet50(path: Path) -> Path:
    """synthetic.standin_resnet50(): a backbone file with calibrated BatchNorm statistics, so that losses stay sane."""
    synthetic.write_standin_resnet50(path)
    return path


# ----------------------------------------------------------------------------- sections: the frame


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


def _failure(error: BaseException) -> str:
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - start, result


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- environment


def section_environment(ctx: Context) -> Section:
    section = Section("environment", "item | value")
    items: list[tuple[str, Any]] = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("CUDA (torch built with)", torch.version.cuda or "none"),
        ("cuDNN", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "none"),
    ]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        items += [
            ("GPU", torch.cuda.get_device_name(ctx.device)),
            ("GPU memory (GiB)", round(props.total_memory / 2**30, 1)),
            ("compute capability", f"{props.major}.{props.minor}"),
            ("GPUs visible", torch.cuda.device_count()),
        ]
        try:
            version = torch.cuda.nccl.version()  # a tuple; an int in older torch
            items.append(("NCCL", ".".join(map(str, version)) if isinstance(version, tuple) else str(version)))
        except Exception as e:  # noqa: BLE001 - a build without NCCL says so in the table
            items.append(("NCCL", _failure(e)))
    else:
        items.append(("GPU", SKIPPED_NO_CUDA))
    items += [
        ("CPU cores", os.cpu_count()),
        ("torch threads", torch.get_num_threads()),
        ("inputs", ctx.results.get("inputs", "not written")),
    ]
    for name, value in items:
        section.add([name, value], item=name, value=value)
    return section


# ----------------------------------------------------------------------------- training throughput


def _landscape_batches(dataset, batch_size: int, count: int, pin: bool) -> list[tuple[tuple, tuple]]:
    """`count` batches of the dataset's landscape images (one aspect-ratio group, as train.py batches them), cycling
    over them; with the training transforms (a random flip), in memory, pinned for a GPU."""
    samples = []
    for index in range(len(dataset)):
        info = dataset.image_info(index)
        if info["width"] <= info["height"]:
            continue
        image, target = dataset[index]
        if pin:
            image = image.pin_memory()
            target = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        samples.append((image, target))
    return [
        utils.collate_fn([samples[(b * batch_size + i) % len(samples)] for i in range(batch_size)])
        for b in range(count)
    ]


def _build_model(ctx: Context, num_classes: int) -> torch.nn.Module:
    """The model as train.py builds it from a backbone file (frozen BatchNorm, 3 trainable stages)."""
    args = argparse.Namespace(
        model=MODEL, weights_backbone=str(ctx.backbone_path), weights=None, test_only=False, resume=""
    )
    spec = models.ModelSpec(MODEL, ctx.plan.min_size, ctx.plan.max_size, model_kwargs=list(ctx.plan.model_kwargs))
    torch.manual_seed(0)
    return models.build_model(spec, num_classes, backbone=models.load_backbone(args))


class Trainer:
    """A model, its SGD optimizer (the reference's lr for this batch) and, for --amp, a GradScaler, on the device."""

    def __init__(self, initial: torch.nn.Module, device: torch.device, batch_size: int, amp: bool):
        self.device = device
        self.model = copy.deepcopy(initial).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.02 * batch_size / 16, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type) if amp else None

    def bare(self, batches) -> None:
        """The bare loop: to the device, forward, backward, step; nothing else."""
        self.model.train()
        for images, targets in batches:
            images = [image.to(self.device, non_blocking=True).float().div_(255) for image in images]
            targets = [
                {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                for t in targets
            ]
            with torch.autocast(device_type=self.device.type, enabled=self.scaler is not None):
                loss_dict = self.model(images, targets)
                loss = sum(loss_dict.values())
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()

    def ours(self, batches, **options) -> utils.MetricLogger:
        """engine.train_one_epoch over the same batches (its log lines go to a buffer)."""
        options = {"print_freq": 10**9, "stop": StopSignal()} | options
        with contextlib.redirect_stdout(io.StringIO()):
            return train_one_epoch(self.model, self.optimizer, batches, self.device, 0, scaler=self.scaler, **options)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _throughput(ctx: Context, initial, dataset, batch_size: int, amp: bool, budget: float) -> dict:
    plan, device = ctx.plan, ctx.device
    batches = _landscape_batches(dataset, batch_size, plan.warmup + plan.max_iterations, pin=ctx.cuda)
    warm, timed = batches[: plan.warmup], batches[plan.warmup :]
    bare, ours = Trainer(initial, device, batch_size, amp), Trainer(initial, device, batch_size, amp)
    first, _ = _timed(lambda: bare.bare(warm[:1]), device)  # allocations, cuDNN's choices: not counted
    rest, _ = _timed(lambda: bare.bare(warm[1:]), device)
    per_iteration = rest / (len(warm) - 1) if len(warm) > 1 else first
    _timed(lambda: ours.ours(warm), device)
    left = budget - first - rest - per_iteration * len(warm)
    iterations = max(2, min(plan.max_iterations, int(left / max(2 * plan.repeats * per_iteration, 1e-6))))
    timed = timed[:iterations]
    bare_times, ours_times, bare_peak, ours_peak, losses = [], [], [], [], []
    for _ in range(plan.repeats):  # alternating, so that drift hits both alike
        _reset_peak(device)
        bare_times.append(_timed(lambda: bare.bare(timed), device)[0])
        bare_peak.append(_peak_mib(device))
        _reset_peak(device)
        seconds, logger = _timed(lambda: ours.ours(timed), device)
        ours_times.append(seconds)
        ours_peak.append(_peak_mib(device))
        losses.append(logger.meters["loss"].global_avg)
    bare_s, ours_s = statistics.median(bare_times), statistics.median(ours_times)
    return {
        "iterations": iterations, "warmup": plan.warmup, "repeats": plan.repeats,
        "bare_s_per_it": bare_s / iterations, "ours_s_per_it": ours_s / iterations,
        "bare_images_per_s": batch_size * iterations / bare_s, "ours_images_per_s": batch_size * iterations / ours_s,
        "ratio": ours_s / bare_s,
        "bare_peak_mib": None if bare_peak[0] is None else max(bare_peak),
        "ours_peak_mib": None if ours_peak[0] is None else max(ours_peak),
        "loss": losses[-1], "loss_finite": all(math.isfinite(v) for v in losses),
    }  # fmt: skip


def section_training_throughput(ctx: Context) -> Section:
    plan = ctx.plan
    section = Section(
        "training throughput",
        "batch | precision | bare loop (images/s) | engine.train_one_epoch (images/s) | ours / bare (time) | goal "
        "| met? | peak memory bare / ours (MiB) | loss finite",
    )
    dataset = get_coco(ctx.data_root, "train", get_transform(True), with_masks=True)
    initial = _build_model(ctx, plan.num_classes)
    configs = [(b, p) for p in ("fp32", "amp") for b in plan.batch_sizes]
    left = sum(1 for _, p in configs if p == "fp32" or ctx.cuda)  # configurations still to run
    ctx.results["train_images_per_s"] = {}
    for batch_size, precision in configs:
        key = {"batch": batch_size, "precision": precision}
        if precision == "amp" and not ctx.cuda:
            section.add([batch_size, precision, SKIPPED_NO_CUDA], status=SKIPPED_NO_CUDA, **key)
            continue
        budget = min(plan.config_seconds, max(ctx.remaining() - 5, 0) / max(left, 1))
        left -= 1
        if budget < 3:
            section.add([batch_size, precision, "skipped (time budget)"], status="skipped (time budget)", **key)
            continue
        try:
            r = _throughput(ctx, initial, dataset, batch_size, precision == "amp", budget)
        except Exception as e:  # noqa: BLE001 - one configuration (an out-of-memory batch 8) does not lose the rest
            section.add([batch_size, precision, _failure(e)], status=_failure(e), **key)
            continue
        finally:
            _free_memory()
        ctx.results["train_images_per_s"][(batch_size, precision)] = r["ours_images_per_s"]
        peaks = "n/a (CPU)" if r["bare_peak_mib"] is None else f"{r['bare_peak_mib']:.0f} / {r['ours_peak_mib']:.0f}"
        cells = [batch_size, precision, r["bare_images_per_s"], r["ours_images_per_s"], f"{r['ratio']:.3f}"]
        section.add(cells + ["<= 1.05", r["ratio"] <= 1.05, peaks, r["loss_finite"]], status="ok", **key, **r)
    size = "x".join(map(str, plan.image_size))
    resize = f"{plan.min_size}/{plan.max_size}" if plan.min_size else "800/1333 (the model's)"
    section.notes.append(
        f"{MODEL}, {plan.num_classes} classes, synthetic {size} images resized by the model to {resize}, one "
        f"aspect-ratio group, in memory (pinned on a GPU); SGD at the reference's lr for the batch. Per row: "
        f"{plan.warmup} warm-up iteration(s) per loop (not timed), then {plan.repeats} timed run(s) of each loop, "
        "alternating; the median. Both loops copy uint8 images to the device and scale them there."
    )
    return section


# ----------------------------------------------------------------------------- host-device syncs


def _count_sync_warnings(run: Callable[[], Any]) -> Counter:
    """Synchronizing CUDA operations during run(), by the Python line that issued them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))


PROFILER_SYNCS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize")


def _profiler_counts(run: Callable[[], Any]) -> dict[str, int]:
    """The profiler's count of synchronizing CUDA runtime calls and of device-to-host copies during run()."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()  # one cudaDeviceSynchronize, taken off below
    counts = {event.key: event.count for event in prof.key_averages()}
    return {
        "stream_syncs": max(sum(counts.get(name, 0) for name in PROFILER_SYNCS) - 1, 0),
        "memcpy_dtoh": sum(n for name, n in counts.items() if name.startswith("Memcpy DtoH")),
    }


def section_syncs(ctx: Context) -> Section:
    section = Section(
        "host-device syncs",
        "loop | synchronizing ops / iteration (set_sync_debug_mode) | cuda*Synchronize / iteration (profiler) "
        "| Memcpy DtoH / iteration (profiler)",
    )
    if not ctx.cuda:
        for loop in ("bare loop", "engine.train_one_epoch"):
            section.add([loop, SKIPPED_NO_CUDA], loop=loop, status=SKIPPED_NO_CUDA)
        section.status = SKIPPED_NO_CUDA
        return section
    n = ctx.plan.sync_iterations
    dataset = get_coco(ctx.data_root, "train", get_transform(True), with_masks=True)
    initial = _build_model(ctx, ctx.plan.num_classes)
    batches = _landscape_batches(dataset, 2, 2 + 2 * n, pin=True)
    counted = {}
    for loop in ("bare", "ours"):
        trainer = Trainer(initial, ctx.device, 2, amp=False)
        step = trainer.bare if loop == "bare" else trainer.ours
        step(batches[:2])  # warm-up
        record: dict[str, Any] = {"loop": loop, "iterations": n, "status": "ok"}
        try:
            locations = _count_sync_warnings(lambda step=step: step(batches[2 : 2 + n]))
            record |= {"sync_debug_per_it": sum(locations.values()) / n, "locations": dict(locations.most_common())}
            counted[loop] = locations
        except Exception as e:  # noqa: BLE001 - the profiler's counts may still come
            record["sync_debug_per_it"] = _failure(e)
        try:
            counts = _profiler_counts(lambda step=step: step(batches[2 + n : 2 + 2 * n]))
            record |= {
                "stream_syncs_per_it": counts["stream_syncs"] / n,
                "memcpy_dtoh_per_it": counts["memcpy_dtoh"] / n,
            }
        except Exception as e:  # noqa: BLE001
            record["stream_syncs_per_it"] = record["memcpy_dtoh_per_it"] = _failure(e)
        name = "bare loop (forward, backward, step)" if loop == "bare" else "engine.train_one_epoch"
        cells = [name, record["sync_debug_per_it"], record["stream_syncs_per_it"], record["memcpy_dtoh_per_it"]]
        section.add(cells, **record)
        del trainer, step
        _free_memory()
    if len(counted) == 2:
        extra = ", ".join(f"{where} x{count}" for where, count in (counted["ours"] - counted["bare"]).most_common(8))
        section.notes.append(f"What ours synchronizes beyond the bare loop in {n} iterations: {extra or 'nothing'}")
    section.notes.append(
        f"Batch 2, fp32, {n} iterations per count after 2 warm-up iterations. The model itself synchronizes too "
        "(torchvision's samplers and box coding); the difference between the rows is what engine.py adds."
    )
    return section


# ----------------------------------------------------------------------------- data loader


def _loader_images_per_s(ctx: Context, dataset_train, dataset_val, workers: int, seconds: float) -> dict:
    args = argparse.Namespace(workers=workers, batch_size=2, aspect_ratio_group_factor=3, use_copypaste=False)
    train_sampler, batch_sampler, loader, _ = build_data_loaders(args, dataset_train, dataset_val, ctx.device, 0)
    train_sampler.set_epoch(0)
    batch_sampler.set_position(0, 0)
    skip = max(2, 2 * workers)  # start-up and the first prefetch: not counted
    images, start, batches = 0, None, iter(loader)
    try:
        for i, (batch_images, _) in enumerate(batches):
            if i == skip - 1:
                start = time.perf_counter()
            elif i >= skip:
                images += len(batch_images)
                if time.perf_counter() - start > seconds:
                    break
        elapsed = time.perf_counter() - start if start is not None else 0.0
    finally:
        del batches  # shuts the workers down
    if not images:
        raise RuntimeError(f"the loader gave no batches beyond the first {skip}; make its dataset larger")
    return {"images": images, "seconds": elapsed, "images_per_s": images / elapsed}


def section_data_loader(ctx: Context) -> Section:
    plan = ctx.plan
    section = Section(
        "data loader",
        "loader | loader only (images/s) | training, batch 2 fp32 (images/s) | loader / training | goal | met? "
        "| loader / fastest training",
    )
    dataset_train = get_coco(ctx.loader_root, "train", get_transform(True), with_masks=True)
    dataset_val = get_coco(ctx.loader_root, "val", get_transform(False), with_masks=False)
    trained = ctx.results.get("train_images_per_s", {})
    train_b2, fastest = trained.get((2, "fp32")), max(trained.values(), default=None)
    for workers in plan.workers:
        name = f"-j {workers}, batch 2"
        try:
            r = _loader_images_per_s(ctx, dataset_train, dataset_val, workers, plan.loader_seconds)
        except Exception as e:  # noqa: BLE001
            section.add([name, _failure(e)], workers=workers, status=_failure(e))
            continue
        ratio = r["images_per_s"] / train_b2 if train_b2 else None
        to_fastest = f"{r['images_per_s'] / fastest:.2f}" if fastest else ""
        cells = [name, r["images_per_s"], train_b2 or "not measured"]
        cells += [None, "", ""] if ratio is None else [f"{ratio:.2f}", ">= 1", ratio >= 1]
        section.add(cells + [to_fastest], workers=workers, status="ok", training_images_per_s=train_b2, ratio=ratio,
                    fastest_training_images_per_s=fastest, **r)  # fmt: skip
    section.notes.append(
        f"samplers.build_data_loaders as train.py builds it (aspect-ratio grouped, seeded, pinned on a GPU) over "
        f"{len(dataset_train)} training images ({plan.loader_distinct} distinct JPEGs, each listed "
        f"{plan.loader_repeat} times: read from the page cache): decode, masks, flip, batches of 2. The first "
        f"max(2, 2 x workers) batches (start-up, prefetch) are not counted, then at most {plan.loader_seconds:g} s. "
        "Training images/s: the training throughput section's engine.train_one_epoch."
    )
    return section


# ----------------------------------------------------------------------------- evaluation


class TimedEvaluator:
    """An Evaluator around CocoEvaluator that times update() (mask pasting and RLE encoding on the device) and
    summarize() (scoring), and keeps a CPU copy of each prediction to evaluate again elsewhere."""

    def __init__(self, inner, device: torch.device, keep_copies: bool):
        self.inner, self.device, self.keep_copies = inner, device, keep_copies
        self.update_seconds, self.summarize_seconds, self.images, self.copies = 0.0, 0.0, 0, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update(self, predictions: dict) -> None:
        self.update_seconds += _timed(lambda: self.inner.update(predictions), self.device)[0]
        self.images += len(predictions)
        if self.keep_copies:
            for image_id, prediction in predictions.items():
                self.copies[image_id] = {
                    k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in prediction.items()
                }

    def synchronize_between_processes(self) -> None:
        self.inner.synchronize_between_processes()

    def summarize(self) -> dict:
        start = time.perf_counter()
        metrics = self.inner.summarize()
        self.summarize_seconds = time.perf_counter() - start
        return metrics


@contextlib.contextmanager
def _model_timer(model: torch.nn.Module, device: torch.device):
    """Time every forward of `model` (synchronized before and after), into the list the block gets."""
    times, starts = [], []

    def before(module, inputs):
        _sync(device)
        starts.append(time.perf_counter())

    def after(module, inputs, output):
        _sync(device)
        times.append(time.perf_counter() - starts.pop())

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()


def _numbers(metrics: dict) -> dict[str, float]:
    """The 12+12 numbers by 'iou_type name'."""
    return {f"{t} {name}": v for t, table in metrics.items() if t != "per_category" for name, v in table.items()}


def _evaluate_on(model, loader, device: torch.device) -> tuple[dict, TimedEvaluator, list]:
    model.to(device)
    timed = TimedEvaluator(coco_evaluator_for(loader, model), device, keep_copies=device.type == "cuda")
    with _model_timer(model, device) as model_times, contextlib.redirect_stdout(io.StringIO()):
        evaluate(model, loader, device, evaluator=timed)
    return timed.inner.metrics, timed, model_times


def _eval_model(ctx: Context) -> tuple[torch.nn.Module, Any, str]:
    """The checkpoint train.py wrote in the torchrun section (else an untrained model from the backbone file)."""
    path = ctx.results.get("checkpoint")
    if path is not None and Path(path).is_file():
        model, classes = models.model_from_checkpoint(ckpt.read_model_file(path, "--resume"), str(path), "--resume")
        return model, classes.label_to_category_id, f"train.py's checkpoint {Path(path).name} (torchrun section)"
    dataset = get_coco(ctx.data_root, "train", None, with_masks=False)
    model = _build_model(ctx, dataset.classes.num_classes)
    return model, dataset.label_to_category_id, "an untrained model (the torchrun section left no checkpoint)"


def section_evaluation(ctx: Context) -> Section:
    section = Section("evaluation", "case | value | expected | agree?")
    model, label_to_category_id, what = _eval_model(ctx)
    dataset = get_coco(
        ctx.data_root, "val", get_transform(False), with_masks=False, label_to_category_id=label_to_category_id
    )
    args = argparse.Namespace(workers=2 if ctx.dry_run else 4)
    runs = {}
    for device in [ctx.device, torch.device("cpu")] if ctx.cuda else [torch.device("cpu")]:
        on = device.type
        _, _, _, loader = build_data_loaders(args, None, dataset, device, 0)
        try:
            metrics, timed, model_times = _evaluate_on(model, loader, device)
        except Exception as e:  # noqa: BLE001
            section.add([f"evaluation on {on}", _failure(e)], device=on, status=_failure(e))
            continue
        runs[on] = (_numbers(metrics), timed, loader)
        n = max(timed.images, 1)
        model_ms, post_ms = 1000 * sum(model_times) / n, 1000 * timed.update_seconds / n
        where = ", on the GPU" if on == "cuda" else ""
        section.add([f"{on}: model time per image (ms)", model_ms], device=on, metric="model_ms", value=model_ms)
        section.add([f"{on}: post-processing per image: masks pasted and RLE-encoded{where} (ms)", post_ms],
                    device=on, metric="postprocess_ms", value=post_ms)  # fmt: skip
        section.add([f"{on}: scoring the {n} images (s)", timed.summarize_seconds], device=on, metric="summarize_s",
                    value=timed.summarize_seconds)  # fmt: skip
        numbers = runs[on][0]
        ap = f"{numbers['bbox AP']:.4f} / {numbers['segm AP']:.4f}"
        section.add([f"{on}: bbox AP / segm AP", ap], device=on, metric="ap", numbers=numbers)
    if not ctx.cuda:
        for case, metric in (
            ("the same checkpoint on CUDA and on the CPU: 12+12 numbers", "cuda_vs_cpu"),
            ("the same raw outputs, masks pasted on CUDA and on the CPU", "paste_cuda_vs_cpu"),
        ):
            section.add([case, SKIPPED_NO_CUDA], status=SKIPPED_NO_CUDA, metric=metric)  # fmt: skip
    elif "cuda" in runs:
        cuda_numbers, cuda_timed, loader = runs["cuda"]
        if "cpu" in runs:
            cpu_numbers = runs["cpu"][0]
            difference = max(abs(cuda_numbers[k] - cpu_numbers[k]) for k in cuda_numbers)
            section.add(["model and masks on CUDA vs on the CPU: largest difference of the 12+12 numbers",
                         f"{difference:.2g}", "<= 0.001", difference <= 1e-3], metric="cuda_vs_cpu",
                        max_difference=difference, cpu=cpu_numbers, cuda=cuda_numbers)  # fmt: skip
        # The very same raw outputs (the CUDA model's), their masks pasted and encoded on the CPU instead.
        cpu_paste = coco_evaluator_for(loader, model)
        cpu_paste.update(cuda_timed.copies)
        with contextlib.redirect_stdout(io.StringIO()):
            cpu_paste.synchronize_between_processes()
            cpu_paste.summarize()
        paste_numbers = _numbers(cpu_paste.metrics)
        difference = max(abs(cuda_numbers[k] - paste_numbers[k]) for k in cuda_numbers)
        gpu_detections, cpu_detections = cuda_timed.inner.detections(), cpu_paste.detections()
        same = sum(a.get("segmentation") == b.get("segmentation") for a, b in zip(gpu_detections, cpu_detections))
        total = max(len(gpu_detections), len(cpu_detections))
        section.add(["the same raw outputs, masks pasted on CUDA vs on the CPU: largest difference of the 12+12",
                     f"{difference:.2g}", "0 (a pixel at 0.5 +- 1e-7 may flip)", difference <= 1e-4],
                    metric="paste_cuda_vs_cpu", max_difference=difference, cpu=paste_numbers)  # fmt: skip
        section.add(
            [
                "masks identical, pasted on CUDA vs on the CPU",
                f"{same} of {total}",
                "all but rounding at 0.5",
                same >= total - max(1, total // 1000),
            ],
            metric="masks_identical",
            same=same,
            total=total,
        )
    section.notes.append(
        f"{what}, on the {len(dataset)} validation images, with engine.evaluate and the default evaluator "
        "(faster-coco-eval). Model time includes the model's own post-processing (boxes, NMS); post-processing is "
        "CocoEvaluator.update: the 28x28 masks pasted and RLE-encoded on the device they are on."
    )
    return section


# ----------------------------------------------------------------------------- torchrun, SIGTERM, exact resume


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (torchrun starts its workers in sessions of their own)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for child in children:
        _kill_tree(int(child))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Launched:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    def tail(self) -> str:
        return (self.stdout[-3000:] + "\n" + self.stderr[-3000:]).strip()


def launch(command: list[str], log: Path, env: dict, timeout: float, stop_when: Callable[[str], bool] | None = None):
    """Run `command` in a session of its own, its output in log.out and log.err; once stop_when(stdout so far) is
    true, SIGTERM its process group (as SLURM or a terminal would). A run past `timeout` is killed."""
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=env, start_new_session=True)
        deadline, signalled, timed_out = time.monotonic() + timeout, False, False
        while process.poll() is None:
            if time.monotonic() > deadline:
                _kill_tree(process.pid)
                timed_out = True
                break
            if stop_when is not None and not signalled and stop_when(out_path.read_text(errors="replace")):
                os.killpg(process.pid, signal.SIGTERM)
                signalled = True
            time.sleep(0.1)
        process.wait()
    return Launched(process.returncode, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                    timed_out)  # fmt: skip


def _train_records(output: Path) -> dict[tuple[int, int], dict]:
    """metrics.jsonl's training records by (epoch, iteration); a resumed run's later record replaces the earlier."""
    records = {}
    for line in (output / utils.METRICS_FILE).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("type") == "train":
                records[(record["epoch"], record["iteration"])] = record
    return records


def _deterministic_probe(ctx: Context) -> str | None:
    """Whether Mask R-CNN trains under torch.use_deterministic_algorithms(True) on this device: None, or the error."""
    if ctx.cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
    device = ctx.device
    model = models.build_model(models.ModelSpec(MODEL, 128, 160, model_kwargs=TINY_MODEL_KWARGS), 4).to(device)
    masks = torch.zeros(1, 128, 160, dtype=torch.uint8, device=device)
    masks[:, 20:100, 10:90] = 1
    boxes, labels = torch.tensor([[10.0, 20.0, 90.0, 100.0]], device=device), torch.tensor([1], device=device)
    torch.use_deterministic_algorithms(True)
    try:
        sum(
            model(
                [torch.rand(3, 128, 160, device=device)], [{"boxes": boxes, "labels": labels, "masks": masks}]
            ).values()
        ).backward()
        _sync(device)
        return None
    except RuntimeError as e:
        return (str(e).strip().splitlines() or [""])[0][:300]
    finally:
        torch.use_deterministic_algorithms(False)


def _train_command(ctx: Context, output: Path, deterministic: bool) -> list[str]:
    plan = ctx.plan
    command = [sys.executable, *"-m torch.distributed.run --standalone --nproc_per_node=1 train.py".split()]
    # the backbone file where train.py looks by default (<data-path>/resnet50.pth), as the README's commands leave it
    command += ["--data-path", str(ctx.data_root), "--output-dir", str(output),
                "--device", ctx.device.type, "-j", "0" if ctx.dry_run else "4"]  # fmt: skip
    command += "-b 2 --epochs 1 --print-freq 1 --seed 0 --auto-resume".split()
    # Without deterministic algorithms the weights cannot match bit for bit; an lr too small to move any weight
    # still compares the data order, the augmentations and the random states (CUDA's: the R-CNN samplers draw on it)
    # bit for bit, through every iteration's losses.
    command += "--use-deterministic-algorithms --lr 0.0025".split() if deterministic else ["--lr", "1e-30"]
    if plan.min_size:
        command += ["--min-size", str(plan.min_size), "--max-size", str(plan.max_size)]
    if plan.model_kwargs:
        command += ["--model-kwargs", *(f"{k}={v}" for k, v in plan.model_kwargs)]
    return command


def _weights_difference(a: Path, b: Path) -> tuple[int, float]:
    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    largest = max(((wa[k].double() - wb[k].double()).abs().max().item() for k in differing), default=0.0)
    return len(differing), largest


def section_torchrun(ctx: Context) -> Section:
    section = Section("torchrun exact resume", "check | result | expected | met?")
    problem = _deterministic_probe(ctx)
    section.add([f"Mask R-CNN trains under torch.use_deterministic_algorithms(True) on {ctx.device.type}",
                 problem or "yes", "yes", problem is None], check="deterministic_algorithms", ok=problem is None,
                error=problem)  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if ctx.threads is not None:
        env["OMP_NUM_THREADS"] = str(ctx.threads)
    if ctx.cuda:
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    runs = ctx.work / "torchrun"
    runs.mkdir(exist_ok=True)
    backend = "NCCL" if ctx.cuda else "gloo"

    # 1. Uninterrupted; with deterministic algorithms where they work, else (or when the run fails with them) lr 1e-30.
    result = None
    for deterministic in [True, False] if problem is None else [False]:
        timeout = min(ctx.plan.run_timeout, max(ctx.remaining() / 3, 20))
        mode = "deterministic" if deterministic else "lr_1e-30"
        whole = runs / f"uninterrupted_{mode}"
        result = launch(_train_command(ctx, whole, deterministic), whole, env, timeout)
        lines = list(TRAIN_LINE.finditer(result.stdout))
        iterations = int(lines[-1].group(3)) if lines else 0
        ok = result.returncode == 0 and (whole / "model_0.pth").is_file()
        flags = "--use-deterministic-algorithms" if deterministic else "--lr 1e-30"
        section.add([f"torchrun --nproc_per_node=1 ({backend}) {flags}: {iterations} iterations, evaluation",
                     f"exit {result.returncode}" + (" (timed out)" if result.timed_out else ""), "exit 0", ok],
                    check="uninterrupted", mode=mode, returncode=result.returncode, iterations=iterations, ok=ok,
                    log="" if ok else result.tail())  # fmt: skip
        if ok:
            break
    if not ok:
        section.status, section.log = "failed", result.tail()
        return section
    ctx.results["checkpoint"] = str(whole / "model_0.pth")
    tables = result.stdout.count("IoU metric: bbox")
    init_line = f"world size 1, {backend.lower()})" in result.stdout
    section.add([f"its distributed init line ({backend}) and AP tables", f"{tables} table(s)", "1",
                 tables == 1 and init_line], check="ap_table", tables=tables, init_line=init_line)  # fmt: skip

    # 2. SIGTERM mid-epoch, then the same command again (--auto-resume), as a requeued job runs it.
    stopped = runs / f"stopped_{mode}"
    half = max(iterations // 2, 1)

    def at_half(text: str) -> bool:
        return any(int(m.group(2)) >= half - 1 for m in TRAIN_LINE.finditer(text))

    command = _train_command(ctx, stopped, deterministic)
    timeout = min(ctx.plan.run_timeout, max(ctx.remaining() / 2, 20))
    result = launch(command, stopped, env, timeout, stop_when=at_half)
    saved = stopped / ckpt.CHECKPOINT_FILE
    state = torch.load(saved, map_location="cpu", weights_only=True) if saved.is_file() else None
    train_state = (state or {}).get("train_state") or {}
    stop_iteration = train_state.get("iteration")
    stop_ok = result.returncode != 0 and "Stopped by SIGTERM" in result.stdout and stop_iteration is not None
    stop_ok = stop_ok and 0 < stop_iteration < iterations
    section.add(["SIGTERM to the launcher's process group mid-epoch: a mid-epoch checkpoint",
                 f"exit {result.returncode}, saved after iteration {stop_iteration}",
                 f"exit != 0, 0 < iteration < {iterations}", stop_ok],
                check="sigterm", returncode=result.returncode, stop_iteration=stop_iteration, ok=stop_ok)  # fmt: skip
    if ctx.cuda:
        cuda_states = len(train_state["rng"][0]["cuda"]) if train_state.get("rng") else 0
        section.add(["CUDA random states in the checkpoint", cuda_states, ">= 1", cuda_states >= 1],
                    check="cuda_rng_saved", count=cuda_states)  # fmt: skip
    if not stop_ok:
        section.status, section.log = "failed", result.tail()
        return section
    timeout = min(ctx.plan.run_timeout, max(ctx.remaining() - 5, 20))
    result = launch(command, stopped.with_name(stopped.name + "_resumed"), env, timeout)
    first_logged = min((int(m.group(2)) for m in TRAIN_LINE.finditer(result.stdout)), default=None)
    resumed_ok = result.returncode == 0 and "Auto-resuming from" in result.stdout and first_logged == stop_iteration
    got, wanted = (
        f"exit {result.returncode}, first iteration {first_logged}",
        f"exit 0, first iteration {stop_iteration}",
    )
    section.add(["the same command again: --auto-resume goes on with the next batch", got, wanted, resumed_ok],
                check="resumed", returncode=result.returncode, first_iteration=first_logged, ok=resumed_ok)  # fmt: skip
    if not resumed_ok:
        section.status, section.log = "failed", result.tail()
        return section

    # 3. The resumed run against the uninterrupted one.
    a, b = _train_records(whole), _train_records(stopped)
    same = [k for k in b if k in a and (a[k]["loss"], a[k]["losses"]) == (b[k]["loss"], b[k]["losses"])]
    after = [k for k in b if k[1] >= stop_iteration]
    # The iteration during which SIGTERM arrived is trained and saved, but train_one_epoch raises TrainingStopped
    # before log_every prints it: metrics.jsonl has no record of it.
    unlogged = sorted(set(a) - set(b))
    losses_ok = len(same) == len(b) and len(after) == iterations - stop_iteration and len(unlogged) <= 1
    section.add(
        [
            f"each iteration's losses in metrics.jsonl, stopped + resumed run vs uninterrupted ({len(after)} "
            "after the resume)",
            f"{len(same)} of {len(b)} identical",
            "all",
            losses_ok,
        ],
        check="losses_equal",
        identical=len(same),
        logged=len(b),
        after_resume=len(after),
        unlogged=unlogged,
        ok=losses_ok,
    )
    differing, largest = _weights_difference(whole / "model_0.pth", stopped / "model_0.pth")
    expected, weights_ok = ("0 (bit for bit)", differing == 0) if deterministic else ("information (lr 1e-30)", None)
    section.add(
        [
            "final weights, resumed vs uninterrupted",
            f"{differing} tensors differ (largest {largest:.3g})",
            expected,
            weights_ok,
        ],
        check="weights_equal",
        differing=differing,
        largest=largest,
        ok=weights_ok,
    )
    cublas = " (CUBLAS_WORKSPACE_CONFIG=:4096:8)" if ctx.cuda else ""
    how = (
        f"With --use-deterministic-algorithms{cublas} and lr 0.0025: the weights must match bit for bit."
        if deterministic
        else "Without deterministic algorithms (see above), at lr 1e-30: no weight moves, so every iteration's losses "
        "must still match bit for bit; the weights do not."
    )
    section.notes.append(
        f"train.py under torch.distributed.run --standalone --nproc_per_node=1 ({backend}), batch 2, 1 epoch of "
        f"{iterations} iterations, --seed 0, --print-freq 1 (metrics.jsonl records every iteration's losses); the "
        f"second run gets SIGTERM once half the epoch is logged, then the same command line runs again. {how}"
    )
    if unlogged:
        section.notes.append(f"Not in the stopped run's metrics.jsonl (trained and saved, never logged): {unlogged}")
    return section


# ----------------------------------------------------------------------------- fp16 AMP


def section_amp(ctx: Context) -> Section:
    plan = ctx.plan
    section = Section(
        "fp16 AMP",
        "run | iterations | loss, first 10 / last 10 (mean) | all finite | steps skipped by GradScaler | goal | met? "
        "| final scale",
    )
    cases = [("fp16 autocast + GradScaler on CUDA", ctx.device)]
    if not ctx.cuda:
        section.add([cases[0][0], SKIPPED_NO_CUDA], status=SKIPPED_NO_CUDA, device="cuda")
        # The same code on the CPU (bfloat16 autocast), so that the section cannot rot before a GPU runs it.
        cases = [("bfloat16 autocast + GradScaler on the CPU (the code path only)", ctx.device)]
    dataset = get_coco(ctx.data_root, "train", get_transform(True), with_masks=True)
    initial = _build_model(ctx, plan.num_classes)
    for name, device in cases:
        try:
            trainer = Trainer(initial, device, 2, amp=True)
            batches = _landscape_batches(dataset, 2, plan.amp_iterations, pin=device.type == "cuda")
            scales, records = [trainer.scaler.get_scale()], []

            def after_step(done: int, trainer=trainer, scales=scales) -> None:
                scales.append(trainer.scaler.get_scale())  # halved after a step skipped for inf/NaN gradients

            trainer.ours(batches, print_freq=1, after_step=after_step, write_metrics=records.append)
            losses = [r["loss"] for r in records]
            skipped = sum(later < earlier for earlier, later in zip(scales, scales[1:]))
            finite = all(math.isfinite(v) for v in losses)
            first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
            goal = max(5, plan.amp_iterations // 20)
            cells = [name, len(losses), f"{first:.4g} / {last:.4g}", finite, skipped, f"<= {goal}"]
            section.add(
                cells + [finite and skipped <= goal, scales[-1]],
                status="ok",
                device=device.type,
                iterations=len(losses),
                losses=losses,
                skipped=skipped,
                finite=finite,
                final_scale=scales[-1],
            )
            del trainer
        except Exception as e:  # noqa: BLE001 - a non-finite loss stops train_one_epoch: that is a finding too
            section.add([name, _failure(e)], status=_failure(e), device=device.type)
        _free_memory()
    section.notes.append(
        f"engine.train_one_epoch with a GradScaler (what --amp does) for {plan.amp_iterations} iterations, batch 2, "
        "SGD lr 0.0025 with the warm-up of epoch 0; a skipped step is one after which the scale went down. "
        "A non-finite loss would stop the loop (NonFiniteLossError) and show as a failure."
    )
    return section


# ----------------------------------------------------------------------------- the run


# (name, function, seconds it needs at least on a GPU, in a dry run), run in this order (the most wanted first, and
# evaluation after the torchrun section, whose checkpoint it evaluates); shown in DISPLAY_ORDER.
SECTIONS: list[tuple[str, Callable[[Context], Section], float, float]] = [
    ("environment", section_environment, 0, 0),
    ("training throughput", section_training_throughput, 40, 5),
    ("torchrun exact resume", section_torchrun, 60, 20),
    ("evaluation", section_evaluation, 20, 5),
    ("fp16 AMP", section_amp, 15, 3),
    ("host-device syncs", section_syncs, 10, 0),
    ("data loader", section_data_loader, 10, 3),
]
DISPLAY_ORDER = ["environment", "training throughput", "host-device syncs", "data loader", "evaluation",
                 "torchrun exact resume", "fp16 AMP"]  # fmt: skip


def _slug(name: str) -> str:
    return name.strip().lower().replace(" ", "-")


def run_section(ctx: Context, name: str, function: Callable[[Context], Section], needs: float) -> Section:
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
        section.add([_failure(e)])
        _free_memory()
    section.seconds = time.monotonic() - start
    if section.status != "ok" and not section.log:
        section.log = captured.getvalue()[-3000:]
    return section


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        return (git("rev-parse", "HEAD") or "unknown") + (" (with uncommitted changes)" if git("status", "-s") else "")
    except OSError:
        return "unknown"


def markdown(header: dict, sections: list[Section]) -> str:
    lines = ["# GPU check", "", f"Machine: {header['machine']}", "", f"Commit: {header['commit']}", "",
             f"Run: {header['mode']}; {header['seconds']:.0f} s of a {header['budget']:.0f} s budget.", ""]  # fmt: skip
    by_name = {s.name: s for s in sections}
    for name in DISPLAY_ORDER:
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


def write_results(out: Path, header: dict, sections: list[Section]) -> None:
    (out / "gpu_check.md").write_text(markdown(header, sections) + "\n")
    data = {**header, "sections": [vars(s) | {"columns": s.columns} for s in sections]}
    (out / "gpu_check.json").write_text(json.dumps(_plain(data), indent=1) + "\n")


def prepare_inputs(ctx: Context) -> None:
    start = time.monotonic()
    plan = ctx.plan
    splits = {"train": (plan.train_images, 1), "val": (plan.val_images, 1)}
    ctx.data_root = write_dataset(ctx.work / "coco", splits, plan.image_size)
    ctx.backbone_path = write_calibrated_resnet50(ctx.data_root / "resnet50.pth")  # where train.py looks by default
    splits = {"train": (plan.loader_distinct, plan.loader_repeat), "val": (2, 1)}
    ctx.loader_root = write_dataset(ctx.work / "coco_loader", splits, plan.image_size, seed=1)
    width, height = plan.image_size
    ctx.results["inputs"] = (
        f"{plan.train_images} training and {plan.val_images} validation images of {width}x{height} (every third "
        f"portrait), 3-8 shapes each; a calibrated ResNet-50; written in {time.monotonic() - start:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    add = parser.add_argument
    add("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    add("--dry-run", action="store_true", help="on the CPU at tiny sizes (what CI runs)")
    add("--device", default=None, help="default: cuda (cpu with --dry-run)")
    add("--budget", type=float, default=None, help="seconds for all sections (default 420; 600 with --dry-run)")
    add("--sections", default=None, help="run only these, comma-separated: " + ",".join(_slug(s[0]) for s in SECTIONS))
    add("--threads", type=int, default=None, help="torch threads here and in train.py (default: 1 with --dry-run, "
        "where a core taken by another process stalls every 2-thread operation; else torch's default)")  # fmt: skip
    add("--work", default=None, help="folder for the inputs and train.py's runs (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here; --dry-run checks the script on the CPU", file=sys.stderr)
        return 2
    chosen = None if args.sections is None else {_slug(s) for s in args.sections.split(",")}
    unknown = sorted((chosen or set()) - {_slug(s[0]) for s in SECTIONS})
    if unknown:
        print(f"error: --sections: no section {', '.join(unknown)}", file=sys.stderr)
        return 2
    budget = args.budget if args.budget is not None else plan.budget
    threads = args.threads if args.threads is not None else (1 if args.dry_run else None)
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(plan, device, args.dry_run, work, deadline=started + budget, threads=threads)
        mode = "dry run on the CPU (tiny sizes)" if args.dry_run else f"full, on {device}"
        header = {"machine": report.machine(device), "commit": _commit(), "budget": budget, "seconds": 0.0,
                  "mode": mode, "dry_run": args.dry_run}  # fmt: skip
        sections: list[Section] = []
        try:
            prepare_inputs(ctx)
        except Exception:  # noqa: BLE001 - without inputs the sections that need them fail one by one, saying so
            ctx.results["inputs"] = "failed: " + traceback.format_exc().strip().splitlines()[-1]
        for name, function, needs_gpu, needs_dry in SECTIONS:
            if chosen is not None and _slug(name) not in chosen and name != "environment":
                continue
            print(f"[gpu_check] {name} ...", flush=True)
            section = run_section(ctx, name, function, needs_dry if args.dry_run else needs_gpu)
            sections.append(section)
            header["seconds"] = time.monotonic() - started
            write_results(out, header, sections)
            print(f"[gpu_check] {name}: {section.status} ({section.seconds:.1f} s)", flush=True)
    print()
    print(markdown(header, sections))
    print(f"\nWrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

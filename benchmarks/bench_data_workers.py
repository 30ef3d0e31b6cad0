"""Data loading at COCO scale: our CocoDetection against the reference's way, on inputs this script writes.

The baseline is what torchvision's references/detection does: torchvision.datasets.CocoDetection
(the pycocotools index over the parsed JSON), images without a usable annotation removed through a
Subset, then a ConvertCocoPolysToMask-style conversion, a horizontal flip and a float tensor. Ours is
coco_utils.get_coco with transforms.get_transform(train=True). Measured in one run, each in fresh
processes of its own:

  - memory: PSS of the main process plus its DataLoader workers once each worker has produced N samples
    (Linux, /proc/<pid>/smaps_rollup), and the same for a dataset that only decodes the JPEGs (the floor);
  - start-up: wall time from launching `python` to the first training batch (aspect-ratio grouped, as
    train.py builds it), and the start-up check for missing image files (one listdir against a stat per file);
  - samples/s per worker: the whole per-sample pipeline in one thread of a process of its own, on the same
    images, the baseline and ours in turn (twice each by default, the best reported).

The inputs: an annotation file of COCO train2017's size (118,287 images, 860,001 instances with polygons of
8 to 40 vertices, 1% crowd regions in uncompressed RLE, the same fields as COCO's) and a handful of
640x480 / 480x640 JPEGs that every image entry links to.

    python benchmarks/bench_data_workers.py                         # quick: 100 samples per worker, 300 for samples/s
    # the issue's numbers (about 20 minutes):
    python benchmarks/bench_data_workers.py --samples 500 2000 --speed-samples 600
"""

import argparse
import bisect
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# COCO's 80 category ids (1..90 with gaps).
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
IMAGE_FILES = [(640, 480)] * 6 + [(480, 640)] * 2  # (width, height) of the real JPEGs all entries link to
LOW_MEMORY_BYTES = 2 * 2**30  # stop a memory run before the machine runs out


# ----------------------------------------------------------------------------- inputs


def _natural_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    """Smooth colour fields, shapes and sensor-like noise: decodes like a photo (about 110 KB at quality 90)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 120))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image).astype(np.int16) + rng.normal(0, 10, (height, width, 3)).astype(np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def _polygons(rng: np.random.Generator, count: int, widths: np.ndarray, heights: np.ndarray) -> list[list[float]]:
    """`count` star-shaped polygons of 8 to 40 vertices, sizes spread as COCO's (many small, some large), inside their
    image."""
    vertices = rng.integers(8, 41, count)
    radius = np.exp(rng.uniform(np.log(4), np.log(160), count))
    cx = rng.uniform(0, 1, count) * widths
    cy = rng.uniform(0, 1, count) * heights
    owner = np.repeat(np.arange(count), vertices)
    angle = rng.uniform(0, 2 * np.pi, len(owner))
    order = np.lexsort((angle, owner))  # vertices by angle within each polygon: a simple polygon
    angle, owner = angle[order], owner[order]
    spread = radius[owner] * rng.uniform(0.5, 1.0, len(owner))
    xs = np.clip(cx[owner] + spread * np.cos(angle), 0, widths[owner] - 0.01).round(2)
    ys = np.clip(cy[owner] + spread * np.sin(angle), 0, heights[owner] - 0.01).round(2)
    flat = np.stack([xs, ys], axis=1).ravel().tolist()
    bounds = np.concatenate([[0], np.cumsum(vertices * 2)]).tolist()
    return [flat[bounds[i] : bounds[i + 1]] for i in range(count)]


def _box_rle(x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> list[int]:
    """Uncompressed (column-major) RLE counts of a filled box, as COCO's crowd regions are written."""
    counts, position = [], 0
    for column in range(x0, x1):
        counts += [column * height + y0 - position, y1 - y0]
        position = column * height + y1
    return counts + [width * height - position]


def _annotation(rng: random.Random, polygon: list[float], image_id: int, ann_id: int, width: int, height: int) -> dict:
    xs, ys = polygon[0::2], polygon[1::2]
    x0, y0 = min(xs), min(ys)
    bbox = [x0, y0, round(max(xs) - x0, 2), round(max(ys) - y0, 2)]
    area = round(0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))), 2)
    segmentation: list | dict = [polygon]
    iscrowd = 0
    if rng.random() < 0.01:
        bx0, by0 = int(x0), int(y0)
        bx1, by1 = max(bx0 + 1, int(x0 + bbox[2])), max(by0 + 1, int(y0 + bbox[3]))
        segmentation = {"counts": _box_rle(bx0, by0, bx1, by1, width, height), "size": [height, width]}
        iscrowd = 1
    return {
        "segmentation": segmentation,
        "area": area,
        "iscrowd": iscrowd,
        "image_id": image_id,
        "bbox": bbox,
        "category_id": rng.choice(COCO_CATEGORY_IDS),
        "id": ann_id,
    }


def _image_entry(image_id: int, kind: int) -> dict:
    """COCO train2017's fields of an image entry."""
    name = f"{image_id:012d}.jpg"
    width, height = IMAGE_FILES[kind]
    return {
        "license": 1 + image_id % 8,
        "file_name": name,
        "coco_url": f"http://images.cocodataset.org/train2017/{name}",
        "height": height,
        "width": width,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": f"http://farm4.staticflickr.com/3/{image_id}_z.jpg",
        "id": image_id,
    }


def _annotations(rng: random.Random, np_rng: np.random.Generator, image_ids: list, kinds: np.ndarray, count: int):
    """`count` instances, about 7.3 per image (a few images with none), drawn a chunk at a time: the whole list as
    Python objects would take gigabytes."""
    owners = np.sort(np_rng.integers(0, len(image_ids), count))
    sizes = np.array(IMAGE_FILES, dtype=np.float64)[kinds[owners]]
    chunk = 20_000
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        polygons = _polygons(np_rng, stop - start, sizes[start:stop, 0], sizes[start:stop, 1])
        for offset, polygon in enumerate(polygons):
            owner = int(owners[start + offset])
            width, height = IMAGE_FILES[kinds[owner]]
            yield _annotation(rng, polygon, image_ids[owner], start + offset + 1, width, height)


def write_inputs(root: Path, num_images: int, num_instances: int, seed: int = 0) -> Path:
    """A COCO layout under `root`: train2017/ of symlinks to a few real JPEGs, annotations/instances_train2017.json
    (synthetic.write_split, the project's one writer of synthetic splits)."""
    # Imported here, not at the top: the measuring children run this file too, and their imports and memory are part
    # of what they measure (synthetic.py imports torch and torchvision).
    from synthetic import write_split

    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    jpegs = root / "jpegs"
    jpegs.mkdir(parents=True)
    for k, (width, height) in enumerate(IMAGE_FILES):
        _natural_jpeg(jpegs / f"{k}.jpg", width, height, seed=k)
    (root / "val2017").mkdir()
    image_ids = np.sort(np_rng.choice(np.arange(1, 600_000), num_images, replace=False)).tolist()
    kinds = np_rng.integers(0, len(IMAGE_FILES), num_images)
    images = [(_image_entry(i, kind), jpegs / f"{kind}.jpg") for i, kind in zip(image_ids, kinds.tolist())]
    annotations = _annotations(rng, np_rng, image_ids, kinds, num_instances)
    categories = [{"supercategory": "thing", "id": i, "name": f"category {i}"} for i in COCO_CATEGORY_IDS]
    info = {"description": "COCO-scale benchmark input", "year": 2017}
    write_split(root, "train", images, annotations, categories, info=info, licenses=[])
    return root


# ----------------------------------------------------------------------------- the baseline: the reference's way


def _polygons_to_masks(segmentations: list, height: int, width: int):
    """The reference's mask conversion: per instance, rasterise its polygons, decode, OR the parts together."""
    import torch
    from pycocotools import mask as mask_utils

    masks = []
    for polygons in segmentations:
        decoded = mask_utils.decode(mask_utils.frPyObjects(polygons, height, width))
        if decoded.ndim < 3:
            decoded = decoded[..., None]
        masks.append(torch.as_tensor(decoded, dtype=torch.uint8).any(dim=2))
    return torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.uint8)


class ReferencePipeline:
    """ConvertCocoPolysToMask, RandomHorizontalFlip(0.5), PILToTensor and ToDtype(float, scale=True), as the reference
    chains them."""

    def __call__(self, image, target):
        import torch
        from torchvision.transforms.v2 import functional as F

        width, height = image.size
        anns = [a for a in target["annotations"] if a["iscrowd"] == 0]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=width)
        boxes[:, 1::2].clamp_(min=0, max=height)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        masks = _polygons_to_masks([a["segmentation"] for a in anns], height, width)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        target = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "masks": masks[keep],
            "image_id": target["image_id"],
            "area": torch.tensor([a["area"] for a in anns])[keep],
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns])[keep],
        }
        if torch.rand(1) < 0.5:
            image = F.horizontal_flip(image)
            target["boxes"][:, [0, 2]] = width - target["boxes"][:, [2, 0]]
            target["masks"] = target["masks"].flip(-1)
        return F.to_dtype(F.pil_to_tensor(image), torch.float, scale=True), target


def _reference_dataset(root: Path):
    """torchvision's CocoDetection wrapped as the reference wraps it, images without a usable annotation left out."""
    import torch
    import torchvision

    class ReferenceCocoDetection(torchvision.datasets.CocoDetection):
        def __init__(self, img_folder, ann_file, transforms):
            super().__init__(img_folder, ann_file)
            self._pipeline = transforms

        def __getitem__(self, index):
            image, anns = super().__getitem__(index)
            return self._pipeline(image, {"image_id": self.ids[index], "annotations": anns})

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress lines
        dataset = ReferenceCocoDetection(
            root / "train2017", root / "annotations" / "instances_train2017.json", ReferencePipeline()
        )

    def usable(anns: list[dict]) -> bool:
        return bool(anns) and not all(any(side <= 1 for side in a["bbox"][2:]) for a in anns)

    keep = [
        i
        for i, image_id in enumerate(dataset.ids)
        if usable(dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=image_id)))
    ]
    return torch.utils.data.Subset(dataset, keep)


def _reference_aspect_ratios(subset) -> list[float]:
    coco = subset.dataset.coco
    return [
        coco.imgs[subset.dataset.ids[i]]["width"] / coco.imgs[subset.dataset.ids[i]]["height"] for i in subset.indices
    ]


def _our_dataset(root: Path):
    from coco_utils import get_coco
    from transforms import get_transform

    return get_coco(root, "train", get_transform(train=True))


class ImagesOnly:
    """The floor under both pipelines: torch imported, the same JPEGs decoded to tensors, no annotations at all."""

    def __init__(self, root: Path):
        self.paths = sorted((root / "train2017").iterdir())

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from torchvision.transforms.v2 import functional as F

        with Image.open(self.paths[index]) as image:
            return F.pil_to_tensor(image.convert("RGB")), {}


def _as_before_issue_13() -> None:
    """Ours as it was before issue #13 (in this process): no image header check at start-up, and images read with
    PIL's convert alone (no EXIF orientation, no 16-bit scaling); to measure what those cost, in the same run."""
    import coco_utils
    import images

    def old_read_rgb(path, expected_size=None, listed_in=""):
        with Image.open(path) as image:
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")

    images._wrong_headers = lambda folder, table, wanted, skip: np.zeros(len(table.file_names), dtype=bool)
    coco_utils.read_rgb = old_read_rgb


def build(variant: str, root: Path):
    """The dataset and its aspect-ratio group ids (train.py's default of 3 bins per side), as train.py builds them."""
    from group_by_aspect_ratio import create_aspect_ratio_groups

    if variant == "before #13":
        _as_before_issue_13()
    if variant == "floor":
        dataset = ImagesOnly(root)
        return dataset, [0] * len(dataset)
    if variant == "baseline":
        dataset = _reference_dataset(root)
        bins = (2 ** np.linspace(-1, 1, 7)).tolist()
        return dataset, [bisect.bisect_right(bins, ratio) for ratio in _reference_aspect_ratios(dataset)]
    dataset = _our_dataset(root)
    with contextlib.redirect_stdout(io.StringIO()):
        return dataset, create_aspect_ratio_groups(dataset, k=3)


# ----------------------------------------------------------------------------- measurements (each in a child process)


def _pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line for process {pid}")


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _pid_and_size(batch: list) -> tuple[int, int]:
    """Collate in the worker to (its pid, batch size): the samples are fully built, but no tensor crosses to the main
    process."""
    return os.getpid(), len(batch)


def child_memory(variant: str, root: Path, workers: int, checkpoints: list[int]) -> dict:
    import torch

    dataset, _ = build(variant, root)
    sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=_pid_and_size
    )
    produced: dict[int, int] = {}
    results, pending = {}, sorted(checkpoints)
    for pid, size in loader:
        produced[pid] = produced.get(pid, 0) + size
        if len(produced) < workers or min(produced.values()) < pending[0]:
            continue
        if _available_bytes() < LOW_MEMORY_BYTES:
            return results | {"aborted": f"less than {LOW_MEMORY_BYTES >> 30} GiB of memory left"}
        per_process = [_pss_bytes(os.getpid())] + [_pss_bytes(p) for p in sorted(produced)]
        results[pending.pop(0)] = {"total": sum(per_process), "main": per_process[0], "workers": per_process[1:]}
        if not pending:
            return results
    return results | {"aborted": f"the dataset ran out before {pending[0]} samples per worker"}


def child_startup(variant: str, root: Path, workers: int, launched_at: float) -> dict:
    import torch

    import utils
    from group_by_aspect_ratio import GroupedBatchSampler

    start = time.time()
    dataset, group_ids = build(variant, root)
    built = time.time()
    sampler = GroupedBatchSampler(torch.utils.data.RandomSampler(dataset), group_ids, 2)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=utils.collate_fn
    )
    next(iter(loader))
    return {"first_batch": time.time() - launched_at, "imports": start - launched_at, "dataset": built - start}


def _image_ids(dataset) -> list[int]:
    if hasattr(dataset, "ids"):
        return dataset.ids
    return [dataset.dataset.ids[i] for i in dataset.indices]  # the baseline's Subset


def child_speed(variant: str, root: Path, image_ids: list[int]) -> dict:
    """Samples/s of one pipeline in a process of its own (as a worker is: the baseline's garbage collector walks
    its own millions of objects, not the other's) and one thread, over the given images (the first ten warm up)."""
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    dataset = build(variant, root)[0]
    position = {image_id: i for i, image_id in enumerate(_image_ids(dataset))}
    indices = [position[image_id] for image_id in image_ids]
    for index in indices[:10]:
        dataset[index]
    start = time.perf_counter()
    for index in indices[10:]:
        dataset[index]
    return {"samples_per_s": (len(indices) - 10) / (time.perf_counter() - start)}


def _decode_times(root: Path, repeats: int = 200) -> dict:
    """One 640x480 JPEG: PIL (what the dataset uses) against torchvision.io.decode_image (deprecated in torchvision
    0.29)."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    path = str(root / "jpegs" / "0.jpg")

    def with_pil():
        with Image.open(path) as image:
            image.load()
            return F.pil_to_tensor(image)

    def with_torchvision():
        return decode_image(read_file(path), mode=ImageReadMode.RGB)

    assert torch.equal(with_pil(), with_torchvision())
    times = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, decode in (("pil", with_pil), ("torchvision", with_torchvision)):
            decode()
            start = time.perf_counter()
            for _ in range(repeats):
                decode()
            times[name] = (time.perf_counter() - start) / repeats
    return times


def file_check_times(root: Path) -> dict:
    """The start-up check for missing image files: a stat per file (the obvious way) against one listdir and set
    look-ups."""
    from images import find_missing_files

    folder = root / "train2017"
    names = sorted(os.listdir(folder))
    start = time.perf_counter()
    assert not any(not (folder / name).exists() for name in names)
    stat_time = time.perf_counter() - start
    start = time.perf_counter()
    assert not find_missing_files(folder, names).any()
    return {"stat": stat_time, "listdir": time.perf_counter() - start, "files": len(names)}


# ----------------------------------------------------------------------------- driver


def _run_child(*args: str) -> dict:
    command = [sys.executable, __file__, "--child", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _row(measure: str, baseline: str, ours: str, ratio: str, goal: str) -> str:
    return f"| {measure} | {baseline} | {ours} | {ratio} | {goal} |"


def _memory_rows_at(count: int, memory: dict[str, dict], workers: int) -> list[str]:
    """The PSS rows after `count` samples per worker: ours against the baseline, then both less the floor."""
    base, ours = memory["baseline"].get(str(count)), memory["ours"].get(str(count))
    if base is None or ours is None:
        reasons = {v: m.get("aborted", "") for v, m in memory.items()}
        return [_row(f"PSS after {count} samples/worker", reasons["baseline"], reasons["ours"], "", "not measured")]
    rows = [
        _row(
            f"PSS, main + {workers} workers, after {count} samples/worker",
            f"{_gib(base['total'])} (main {_gib(base['main'])})",
            f"{_gib(ours['total'])} (main {_gib(ours['main'])})",
            f"{ours['total'] / base['total']:.3f}",
            "<= 0.25",
        )
    ]
    floor = memory["floor"].get(str(count))
    if floor is not None:
        rows.append(
            _row(
                f"  the same less the floor ({_gib(floor['total'])}: torch, {workers} workers decoding the JPEGs)",
                _gib(base["total"] - floor["total"]),
                _gib(ours["total"] - floor["total"]),
                f"{(ours['total'] - floor['total']) / (base['total'] - floor['total']):.3f}",
                "",
            )
        )
    return rows


def _memory_growth_rows(samples: list[int], memory: dict[str, dict], workers: int) -> list[str]:
    """PSS growth per worker from the fewest to the most samples, where there are two counts and both were read."""
    if len(samples) <= 1:
        return []
    first, last = str(min(samples)), str(max(samples))
    growth = {
        v: (m[last]["total"] - m[first]["total"]) / workers for v, m in memory.items() if first in m and last in m
    }
    if "baseline" not in growth or "ours" not in growth:
        return []
    return [
        _row(
            f"PSS growth per worker, {first} to {last} samples",
            f"{growth['baseline'] / 2**20:+.1f} MiB",
            f"{growth['ours'] / 2**20:+.1f} MiB",
            "",
            "flat",
        )
    ]


def _memory_rows(args: argparse.Namespace, root: Path) -> list[str]:
    """PSS of the baseline, ours and the floor, each in child processes of its own, at every sample count."""
    samples = [str(s) for s in args.samples]
    memory = {v: _run_child("memory", v, str(root), str(args.workers), *samples) for v in ("baseline", "ours", "floor")}
    rows = []
    for count in args.samples:
        rows += _memory_rows_at(count, memory, args.workers)
    return rows + _memory_growth_rows(args.samples, memory, args.workers)


def _startup_rows(args: argparse.Namespace, root: Path) -> list[str]:
    """Launch to first batch of the baseline, ours and ours before issue #13, the best of the repeats of each."""
    startup: dict[str, list[dict]] = {"baseline": [], "ours": [], "before #13": []}
    for _ in range(args.startup_repeats):
        for variant in startup:
            startup[variant].append(_run_child("startup", variant, str(root), str(args.workers), repr(time.time())))
    best = {v: min(runs, key=lambda r: r["first_batch"]) for v, runs in startup.items()}
    base, ours, before = best["baseline"], best["ours"], best["before #13"]
    return [
        _row(
            f"launch to first batch ({args.workers} workers, best of {args.startup_repeats})",
            f"{base['first_batch']:.1f} s",
            f"{ours['first_batch']:.1f} s",
            f"{ours['first_batch'] / base['first_batch']:.2f}",
            "<= 0.5",
        ),
        _row("  of which: building the dataset", f"{base['dataset']:.1f} s", f"{ours['dataset']:.1f} s", "", ""),
        _row("  of which: imports", f"{base['imports']:.1f} s", f"{ours['imports']:.1f} s", "", ""),
        _row(
            "  ours before issue #13 (no image header check) / ours",
            f"{before['first_batch']:.1f} s (dataset {before['dataset']:.1f} s)",
            f"{ours['first_batch']:.1f} s (dataset {ours['dataset']:.1f} s)",
            f"{ours['first_batch'] / before['first_batch']:.2f}",
            "",
        ),
    ]


def _file_check_row(checks: dict) -> str:
    """The start-up check for missing image files: a stat per file against one listdir."""
    return _row(
        f"  start-up check for missing image files ({checks['files']} files)",
        f"a stat per file: {checks['stat']:.2f} s",
        f"one listdir: {checks['listdir']:.2f} s",
        f"{checks['listdir'] / checks['stat']:.2f}",
        "cheap",
    )


def _best_speeds(args: argparse.Namespace, root: Path) -> dict[str, float]:
    """The best samples/s of the baseline, ours and ours before issue #13, on the same randomly chosen images."""
    ids_file = root / "speed_image_ids.json"
    ours_ids = _our_dataset(root).ids  # a subset of the baseline's: it also drops images with only crowd regions
    ids_file.write_text(json.dumps(random.Random(0).sample(ours_ids, args.speed_samples + 10)))
    runs: dict[str, list[float]] = {"baseline": [], "ours": [], "before #13": []}
    for _ in range(args.speed_repeats):
        for variant in runs:
            runs[variant].append(_run_child("speed", variant, str(root), str(ids_file))["samples_per_s"])
    return {variant: max(rates) for variant, rates in runs.items()}


def _speed_rows(args: argparse.Namespace, root: Path) -> list[str]:
    """Samples/s per worker of each pipeline, then JPEG decode times (PIL against torchvision.io)."""
    speed = _best_speeds(args, root)
    rows = [
        _row(
            f"samples/s per worker (decode, targets, flip, tensor; best of {args.speed_repeats})",
            f"{speed['baseline']:.1f}",
            f"{speed['ours']:.1f}",
            f"{speed['ours'] / speed['baseline']:.2f}x",
            ">= 1.5x",
        ),
        _row(
            "  ours before issue #13 (PIL convert alone) / ours",
            f"{speed['before #13']:.1f}",
            f"{speed['ours']:.1f}",
            f"{speed['ours'] / speed['before #13']:.2f}x",
            "",
        ),
    ]
    decode = _decode_times(root)
    return rows + [
        _row(
            "  JPEG decode 640x480 (information: PIL, used by both, vs torchvision.io)",
            f"PIL {decode['pil'] * 1e3:.2f} ms",
            f"torchvision.io {decode['torchvision'] * 1e3:.2f} ms",
            f"{decode['torchvision'] / decode['pil']:.2f}",
            "",
        ),
    ]


def measure_all(args: argparse.Namespace, root: Path) -> list[str]:
    """The table's rows: memory, start-up, the missing-file check and samples/s, each part as `--only` asks."""
    rows = ["| measure | baseline (reference's way) | ours | ours / baseline | goal |", "|---|---|---|---|---|"]
    checks = file_check_times(root)
    if "memory" in args.only:
        rows += _memory_rows(args, root)
    if "startup" in args.only:
        rows += _startup_rows(args, root)
    rows.append(_file_check_row(checks))
    if "speed" in args.only:
        rows += _speed_rows(args, root)
    return rows


def run_child(argv: list[str]) -> None:
    kind, rest = argv[0], argv[1:]
    if kind == "memory":
        result = child_memory(rest[0], Path(rest[1]), int(rest[2]), [int(s) for s in rest[3:]])
    elif kind == "startup":
        result = child_startup(rest[0], Path(rest[1]), int(rest[2]), float(rest[3]))
    else:
        result = child_speed(rest[0], Path(rest[1]), json.loads(Path(rest[2]).read_text()))
    print(json.dumps(result))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=118_287, help="image entries in the annotation file (COCO train2017: 118287)"
    )
    parser.add_argument(
        "--instances", type=int, default=860_001, help="instances in the annotation file (COCO train2017: 860001)"
    )
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers for the memory and start-up runs")
    parser.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[100],
        help="samples per worker at which PSS is read (issue: 500 2000)",
    )
    parser.add_argument("--speed-samples", type=int, default=300, help="samples per pipeline for samples/s")
    parser.add_argument(
        "--speed-repeats", type=int, default=2, help="processes per pipeline for samples/s (the best is reported)"
    )
    parser.add_argument("--startup-repeats", type=int, default=1, help="launches per variant (the best is reported)")
    parser.add_argument(
        "--only", nargs="+", default=["memory", "startup", "speed"], choices=["memory", "startup", "speed"]
    )
    parser.add_argument(
        "--inputs", default=None, help="reuse (or write and keep) the inputs in this folder instead of a temporary one"
    )
    return parser


def main(args: argparse.Namespace) -> None:
    keep = args.inputs is not None
    root = Path(args.inputs) if keep else Path(tempfile.mkdtemp(prefix="bench_data_workers_"))
    try:
        if not (root / "annotations" / "instances_train2017.json").exists():
            start = time.time()
            write_inputs(root, args.images, args.instances)
            size = (root / "annotations" / "instances_train2017.json").stat().st_size
            print(
                f"wrote {args.images} images, {args.instances} instances ({size / 2**20:.0f} MiB of JSON) "
                f"in {time.time() - start:.0f} s"
            )
        print(f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
        print("\n".join(measure_all(args, root)))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(sys.argv[2:])
    else:
        main(get_args_parser().parse_args())

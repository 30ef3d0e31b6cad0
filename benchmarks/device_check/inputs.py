"""The device check's inputs, written by synthetic.py's writer: COCO-style images of COCO's size (about 640x480, which
the model resizes to 800/1333), 3-8 shapes each on a noisy background, and a ResNet-50 backbone file with calibrated
BatchNorm statistics (synthetic.standin_resnet50), so that the losses are sane."""

import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from device_check.frame import Context
from synthetic import SHAPES_BY_NAME, polygons_area, write_split, write_standin_resnet50

CATEGORIES = {1: ("disc", (225, 45, 45)), 2: ("square", (40, 205, 70)), 3: ("triangle", (60, 90, 240))}


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
        name, colour = CATEGORIES[category_id]
        polygon = [round(v, 2) for v in SHAPES_BY_NAME[name](cx, cy, r)[0]]
        draw.polygon(polygon, fill=tuple(int(c) + int(rng.integers(-20, 21)) for c in colour))
        xs, ys = polygon[0::2], polygon[1::2]
        area = polygons_area([polygon], width, height)
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotations.append(
            {"segmentation": [polygon], "bbox": bbox, "area": area, "iscrowd": 0, "category_id": category_id}
        )
    return image, annotations


def write_dataset(root: Path, splits: dict[str, tuple[int, int]], size: tuple[int, int], seed: int = 0) -> Path:
    """COCO's layout under `root`: per split, `distinct` images of `size` (every third one portrait), each listed
    `repeat` times (under a new image id each time), with their instance annotations."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, (name, _) in CATEGORIES.items()]
    for split, (distinct, repeat) in splits.items():
        drawn = []
        for k in range(distinct):
            width, height = size if k % 3 != 2 else size[::-1]
            picture, annotations = _draw_image(rng, width, height)
            drawn.append(({"file_name": f"{k:012d}.jpg", "width": width, "height": height}, picture, annotations))
        images, annotations = [], []
        for copy_index in range(repeat):
            for k, (info, picture, anns) in enumerate(drawn):
                image_id = 1 + copy_index * distinct + k
                images.append(({"id": image_id, **info}, picture if copy_index == 0 else None))  # one file per image
                annotations += [{**a, "id": len(annotations) + i + 1, "image_id": image_id} for i, a in enumerate(anns)]
        write_split(root, split, images, annotations, categories, quality=90)
    return root


def prepare_inputs(ctx: Context) -> None:
    """The datasets and the backbone file, their paths in `ctx`; a failure is recorded for the environment table (the
    sections that need the inputs then fail one by one, saying so)."""
    start = time.monotonic()
    plan = ctx.plan
    try:
        splits = {"train": (plan.train_images, 1), "val": (plan.val_images, 1)}
        ctx.data_root = write_dataset(ctx.work / "coco", splits, plan.image_size)
        if plan.backbone_file:
            ctx.backbone_path = ctx.data_root / "resnet50.pth"  # where train.py looks by default
            write_standin_resnet50(ctx.backbone_path)
        splits = {"train": (plan.loader_distinct, plan.loader_repeat), "val": (2, 1)}
        ctx.loader_root = write_dataset(ctx.work / "coco_loader", splits, plan.image_size, seed=1)
    except Exception:  # noqa: BLE001 - the run goes on and reports
        ctx.results["inputs"] = "failed: " + traceback.format_exc().strip().splitlines()[-1]
        return
    width, height = plan.image_size
    backbone = "a calibrated ResNet-50" if plan.backbone_file else f"{plan.model}, no backbone file"
    ctx.results["inputs"] = (
        f"{plan.train_images} training and {plan.val_images} validation images of {width}x{height} (every third "
        f"portrait), 3-8 shapes each; {backbone}; written in {time.monotonic() - start:.1f} s"
    )

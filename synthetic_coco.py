"""Write the embedded default: a small synthetic dataset in the COCO 2017 layout.

The dataset exists so that the real loading, training and evaluation code runs on a machine
without COCO. It has the quirks the loaders must handle: polygons (one instance made of two
parts), compressed and uncompressed RLE, crowd regions, non-contiguous category ids,
grayscale and CMYK JPEGs, images with no annotation and a degenerate box.

It is also designed to be learnable from scratch in a few hundred CPU iterations, so that the
demo shows a real AP: each category has its own colour (with distinct brightness, so grayscale
images stay readable) and its own shape, objects do not overlap, and the background is plain.

    python synthetic_coco.py --output data/synthetic --seed 0
"""

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

# id -> (name, RGB colour); ids are deliberately not contiguous, as in COCO.
CATEGORIES = {
    2: ("disc", (225, 45, 45)),
    5: ("square", (40, 205, 70)),
    11: ("triangle", (60, 90, 240)),
    17: ("bars", (235, 215, 40)),
}
IMAGE_SIZES = [(128, 96), (96, 128), (128, 128)]  # (width, height): three aspect-ratio groups
CROWD_CATEGORY = 2


def _disc(cx: float, cy: float, r: float) -> list[list[float]]:
    n = 24
    return [[c for k in range(n) for c in (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))]]


def _square(cx: float, cy: float, r: float) -> list[list[float]]:
    return [[cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r]]


def _triangle(cx: float, cy: float, r: float) -> list[list[float]]:
    return [[cx, cy - r, cx + r, cy + r, cx - r, cy + r]]


def _bars(cx: float, cy: float, r: float) -> list[list[float]]:
    # Two separate vertical bars: one instance whose polygon has two parts.
    w = r / 3
    left = [cx - r, cy - r, cx - r + w, cy - r, cx - r + w, cy + r, cx - r, cy + r]
    right = [cx + r - w, cy - r, cx + r, cy - r, cx + r, cy + r, cx + r - w, cy + r]
    return [left, right]


SHAPES = {2: _disc, 5: _square, 11: _triangle, 17: _bars}


def _round_polygons(polygons: list[list[float]]) -> list[list[float]]:
    return [[round(v, 2) for v in poly] for poly in polygons]


def _bbox_of_polygons(polygons: list[list[float]]) -> list[float]:
    xs = [v for poly in polygons for v in poly[0::2]]
    ys = [v for poly in polygons for v in poly[1::2]]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def _place_objects(rng: random.Random, width: int, height: int, count: int, taken=()) -> list[tuple[float, float, float]]:
    """Centres and half-sizes of up to `count` new objects whose boxes touch neither each other nor `taken`."""
    placed: list[tuple[float, float, float]] = list(taken)
    for _ in range(count * 20):
        if len(placed) == len(taken) + count:
            break
        r = rng.uniform(10, 24)
        cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        if all(abs(cx - x) > r + s + 3 or abs(cy - y) > r + s + 3 for x, y, s in placed):
            placed.append((cx, cy, r))
    return placed[len(taken) :]


def _background(rng: random.Random, np_rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = np.array([rng.randint(15, 70) for _ in range(3)], dtype=np.float32)
    noise = np_rng.normal(0, 4, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _jitter(rng: random.Random, colour: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)


def _crowd_region(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int, taken) -> dict | None:
    """A cluster of small dots annotated as one crowd region with uncompressed RLE."""
    spots = _place_objects(rng, width, height, 1, taken)
    if not spots:
        return None
    cx, cy, r = spots[0]
    mask = Image.new("L", (width, height), 0)
    mask_draw = ImageDraw.Draw(mask)
    colour = _jitter(rng, CATEGORIES[CROWD_CATEGORY][1])
    for _ in range(rng.randint(3, 6)):
        x, y = rng.uniform(cx - r + 3, cx + r - 3), rng.uniform(cy - r + 3, cy + r - 3)
        dot = [x - 3, y - 3, x + 3, y + 3]
        draw.ellipse(dot, fill=colour)
        mask_draw.ellipse(dot, fill=1)
    binary = np.asarray(mask, dtype=np.uint8)
    rle = mask_utils.encode(np.asfortranarray(binary))
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return {
        "segmentation": {"size": [height, width], "counts": _uncompressed_counts(binary)},
        "bbox": [x, y, w, h],
        "area": int(binary.sum()),
        "iscrowd": 1,
        "category_id": CROWD_CATEGORY,
    }


def _uncompressed_counts(binary: np.ndarray) -> list[int]:
    """Run lengths in column-major order, starting with a run of zeros (COCO's crowd format)."""
    flat = binary.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


def _as_compressed_rle(polygons: list[list[float]], width: int, height: int) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _make_image(rng, np_rng, image_id: int, split_dir: Path, with_objects: bool) -> tuple[dict, list[dict]]:
    width, height = rng.choice(IMAGE_SIZES)
    pixels = _background(rng, np_rng, width, height)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    annotations = []
    placed = _place_objects(rng, width, height, rng.randint(1, 4)) if with_objects else []
    for cx, cy, r in placed:
        category_id = rng.choice(list(CATEGORIES))
        polygons = _round_polygons(SHAPES[category_id](cx, cy, r))
        for poly in polygons:
            draw.polygon(poly, fill=_jitter(rng, CATEGORIES[category_id][1]))
        segmentation = _as_compressed_rle(polygons, width, height) if rng.random() < 0.15 else polygons
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))))
        annotations.append(
            {"segmentation": segmentation, "bbox": _bbox_of_polygons(polygons), "area": area, "iscrowd": 0, "category_id": category_id}
        )
    if with_objects and rng.random() < 0.2:
        crowd = _crowd_region(rng, draw, width, height, placed)
        if crowd:
            annotations.append(crowd)
    if with_objects and rng.random() < 0.02:
        # A degenerate box (zero width), as a few real COCO annotations have; loaders must drop it.
        x, y = rng.uniform(0, width - 1), rng.uniform(0, height - 10)
        annotations.append(
            {"segmentation": [[x, y, x, y + 5, x, y + 9]], "bbox": [x, y, 0.0, 9.0], "area": 0.0, "iscrowd": 0, "category_id": 5}
        )

    file_name = f"{image_id:012d}.jpg"
    mode = rng.choices(["RGB", "L", "CMYK"], weights=[0.88, 0.1, 0.02])[0]
    image.convert(mode).save(split_dir / file_name, quality=92)
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}, annotations


def write_split(root: Path, split: str, num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int) -> dict:
    split_dir = root / f"{split}2017"
    split_dir.mkdir(parents=True, exist_ok=True)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    images, annotations = [], []
    image_id, ann_id = first_image_id, first_ann_id
    for index in range(num_images):
        # Every 50th image has no objects: dropped for training, kept for evaluation.
        image, anns = _make_image(rng, np_rng, image_id, split_dir, with_objects=index % 50 != 49)
        images.append(image)
        for ann in anns:
            ann.update(id=ann_id, image_id=image_id)
            annotations.append(ann)
            ann_id += rng.randint(1, 3)
        image_id += rng.randint(1, 7)  # sparse ids, as in COCO
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, (name, _) in CATEGORIES.items()]
    data = {
        "info": {"description": f"synthetic shapes, {split} split", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
        json.dump(data, f)
    return data


def generate(root: str | Path, num_train: int = 512, num_val: int = 64, seed: int = 0) -> Path:
    """Write `root/{train2017,val2017,annotations}`; the same seed gives the same files."""
    root = Path(root)
    rng = random.Random(seed)
    write_split(root, "train", num_train, rng, first_image_id=1, first_ann_id=1)
    write_split(root, "val", num_val, rng, first_image_id=100000, first_ann_id=500000)
    return root


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="data/synthetic", help="folder to write the dataset into")
    parser.add_argument("--num-train", type=int, default=512, help="training images")
    parser.add_argument("--num-val", type=int, default=64, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args: argparse.Namespace) -> None:
    root = generate(args.output, args.num_train, args.num_val, args.seed)
    print(f"wrote {args.num_train} training and {args.num_val} validation images to {root}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Synthetic stand-ins for what a machine without COCO lacks: COCO-format data and a ResNet-50 backbone file.

One writer for every synthetic split (`write_split`: an image folder in COCO's 2017 layout and its annotation file,
from images and annotations the caller made), and the embedded default dataset drawn with it (`generate`: shapes,
with the quirks the loaders must handle). The keypoint variant (stick figures) is synthetic_people.py;
synthetic_coco.py is the command line. They are modules rather than part of that script so that the tests and the
benchmark scripts, which never import a script, write their data with the same code.

    generate(root, num_train=128, num_val=48, seed=0)      # what `make demo` trains on
    write_split(root, "train", [(entry, picture), ...], annotations, categories)   # hand-made images and annotations

The dataset has the quirks the loaders must handle: polygons (one instance made of two parts), compressed and
uncompressed RLE, crowd regions, non-contiguous category ids, grayscale and CMYK JPEGs, images with no annotation
and a degenerate box. It is also designed to be learnable from scratch in a few hundred CPU iterations, so that the
demo shows a real AP: each category has its own colour (with distinct brightness, so grayscale images stay readable)
and its own shape, objects do not overlap, and the background is plain.
"""

import itertools
import json
import math
import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torchvision
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
JSON_BATCH = 10_000  # annotations encoded at a time: a COCO-scale file is written without holding all of it as text

# A split's image: its COCO entry (id, file_name, width, height, ...) and what to put at file_name: a picture (saved
# as a JPEG), a file (linked to), or None (the file is already there: an image listed again under another id).
SplitImage = tuple[dict, Image.Image | Path | None]
# make_image(rng, np_rng, image_id, with_objects) -> (entry, picture, annotations without ids)
MakeImage = Callable[[random.Random, np.random.Generator, int, bool], tuple[dict, Image.Image, list[dict]]]


# ----------------------------------------------------------------------------- the writer


def write_annotations(
    path: Path,
    images: list[dict],
    annotations: Iterable[dict],
    categories: list[dict],
    info: dict | None = None,
    licenses: list | None = None,
) -> None:
    """An annotation file: the same text as json.dump of {info, licenses (those given), images, annotations,
    categories}, with the annotations encoded a batch at a time as they come."""
    head = {key: value for key, value in (("info", info), ("licenses", licenses)) if value is not None}
    with open(path, "w") as f:
        f.write(json.dumps({**head, "images": images})[:-1] + ', "annotations": [')
        iterator = iter(annotations)
        for index, batch in enumerate(iter(lambda: list(itertools.islice(iterator, JSON_BATCH)), [])):
            f.write((", " if index else "") + json.dumps(batch)[1:-1])
        f.write('], "categories": ' + json.dumps(categories) + "}")


def write_split(
    root: Path,
    split: str,
    images: Iterable[SplitImage],
    annotations: Iterable[dict],
    categories: list[dict],
    *,
    info: dict | None = None,
    licenses: list | None = None,
    kind: str = "instances",
    quality: int = 92,
) -> list[dict]:
    """One split in COCO's 2017 layout: the images in root/{split}2017/ and root/annotations/{kind}_{split}2017.json.
    The annotations carry their ids and image ids already. Returns the image entries."""
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry, picture in images:
        if isinstance(picture, Image.Image):
            picture.save(folder / entry["file_name"], quality=quality)
        elif picture is not None:
            os.symlink(picture, folder / entry["file_name"])
        entries.append(entry)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"{kind}_{split}2017.json"
    write_annotations(path, entries, annotations, categories, info, licenses)
    return entries


# ----------------------------------------------------------------------------- shapes


def _disc(cx: float, cy: float, r: float) -> list[list[float]]:
    n = 24
    return [
        [c for k in range(n) for c in (cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n))]
    ]


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


# name -> polygons(cx, cy, r): the parts of a shape of half-size r centred on (cx, cy)
SHAPES_BY_NAME = {"disc": _disc, "square": _square, "triangle": _triangle, "bars": _bars}
SHAPES = {category_id: SHAPES_BY_NAME[name] for category_id, (name, _) in CATEGORIES.items()}


def _round_polygons(polygons: list[list[float]]) -> list[list[float]]:
    return [[round(v, 2) for v in poly] for poly in polygons]


def bbox_of_polygons(polygons: list[list[float]]) -> list[float]:
    """COCO's [x, y, width, height] around the polygons, to 2 decimals."""
    xs = [v for poly in polygons for v in poly[0::2]]
    ys = [v for poly in polygons for v in poly[1::2]]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


def polygons_area(polygons: list[list[float]], width: int, height: int) -> float:
    """The area pycocotools gives the polygons' mask (COCO's `area` of a polygon annotation)."""
    return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))))


def _place_objects(
    rng: random.Random, width: int, height: int, count: int, taken=()
) -> list[tuple[float, float, float]]:
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
    """A plain dark colour with a little noise."""
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


def _shape_annotations(rng: random.Random, draw: ImageDraw.ImageDraw, placed, width: int, height: int) -> list[dict]:
    """Each placed object drawn as a shape of a random category; its annotation (polygons, now and then RLE)."""
    annotations = []
    for cx, cy, r in placed:
        category_id = rng.choice(list(CATEGORIES))
        polygons = _round_polygons(SHAPES[category_id](cx, cy, r))
        for poly in polygons:
            draw.polygon(poly, fill=_jitter(rng, CATEGORIES[category_id][1]))
        segmentation = _as_compressed_rle(polygons, width, height) if rng.random() < 0.15 else polygons
        annotations.append(
            {
                "segmentation": segmentation,
                "bbox": bbox_of_polygons(polygons),
                "area": polygons_area(polygons, width, height),
                "iscrowd": 0,
                "category_id": category_id,
            }
        )
    return annotations


def canvas(rng: random.Random, np_rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """An image of one of IMAGE_SIZES with a plain background, to draw on."""
    width, height = rng.choice(IMAGE_SIZES)
    image = Image.fromarray(_background(rng, np_rng, width, height), "RGB")
    return image, ImageDraw.Draw(image)


def _make_image(
    rng: random.Random, np_rng: np.random.Generator, image_id: int, with_objects: bool
) -> tuple[dict, Image.Image, list[dict]]:
    image, draw = canvas(rng, np_rng)
    width, height = image.size
    placed = _place_objects(rng, width, height, rng.randint(1, 4)) if with_objects else []
    annotations = _shape_annotations(rng, draw, placed, width, height)
    if with_objects and rng.random() < 0.2:
        crowd = _crowd_region(rng, draw, width, height, placed)
        if crowd:
            annotations.append(crowd)
    if with_objects and rng.random() < 0.02:
        # A degenerate box (zero width), as a few real COCO annotations have; loaders must drop it.
        x, y = rng.uniform(0, width - 1), rng.uniform(0, height - 10)
        annotations.append(
            {
                "segmentation": [[x, y, x, y + 5, x, y + 9]],
                "bbox": [x, y, 0.0, 9.0],
                "area": 0.0,
                "iscrowd": 0,
                "category_id": 5,
            }
        )
    mode = rng.choices(["RGB", "L", "CMYK"], weights=[0.88, 0.1, 0.02])[0]
    return image_entry(image_id, width, height), image.convert(mode), annotations


def image_entry(image_id: int, width: int, height: int) -> dict:
    """COCO's image entry of a generated image, named by its id as COCO's files are."""
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}


def draw_split(
    num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int, make_image: MakeImage
) -> tuple[list[SplitImage], list[dict]]:
    """A split's images drawn by make_image, with sparse image ids and annotation ids, as COCO's are."""
    np_rng = np.random.default_rng(rng.randrange(2**32))
    images, annotations = [], []
    image_id, ann_id = first_image_id, first_ann_id
    for index in range(num_images):
        # Every 50th image has no objects: dropped for training, kept for evaluation.
        entry, picture, anns = make_image(rng, np_rng, image_id, index % 50 != 49)
        images.append((entry, picture))
        for ann in anns:
            ann.update(id=ann_id, image_id=image_id)
            annotations.append(ann)
            ann_id += rng.randint(1, 3)
        image_id += rng.randint(1, 7)
    return images, annotations


def shapes_images(count: int, seed: int = 0) -> list[Image.Image]:
    """`count` RGB images of the default dataset's kind (its sizes, 1-4 shapes each), without their annotations:
    export.py's verification images when no data is given."""
    images, _ = draw_split(count, random.Random(seed), 1, 1, _make_image)
    return [picture.convert("RGB") for _, picture in images]


def write_shapes_split(
    root: Path, split: str, num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int
) -> list[dict]:
    """One split of the default dataset: its images and instances_{split}2017.json."""
    images, annotations = draw_split(num_images, rng, first_image_id, first_ann_id, _make_image)
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, (name, _) in CATEGORIES.items()]
    info = {"description": f"synthetic shapes, {split} split", "version": "1.0"}
    return write_split(root, split, images, annotations, categories, info=info, licenses=[])


# write(root, split, num_images, rng, first_image_id, first_ann_id): one split of a generated dataset
WriteSplit = Callable[[Path, str, int, random.Random, int, int], list[dict]]


def generate_with(write: WriteSplit, root: str | Path, num_train: int, num_val: int, seed: int) -> Path:
    """Both splits of a generated dataset under `root`, from one random stream: the same seed gives the same files."""
    root = Path(root)
    rng = random.Random(seed)
    write(root, "train", num_train, rng, 1, 1)
    write(root, "val", num_val, rng, 100000, 500000)
    return root


def generate(root: str | Path, num_train: int = 512, num_val: int = 64, seed: int = 0) -> Path:
    """Write the default dataset to `root/{train2017,val2017,annotations}`; the same seed gives the same files."""
    return generate_with(write_shapes_split, root, num_train, num_val, seed)


# ----------------------------------------------------------------------------- a stand-in backbone file


def standin_resnet50() -> dict[str, torch.Tensor]:
    """A ResNet-50 state dict that behaves like ImageNet weights under FrozenBatchNorm, for tests and benchmarks on
    machines without the real file: zero-initialised residual branches, and BatchNorm statistics calibrated on a few
    normalised random batches (a plain resnet50()'s are 0 and 1, with which losses turn NaN within a few iterations
    at lr 0.01). Deterministic (seed 0)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(zero_init_residual=True)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, 96, 96))
    return model.state_dict()


def write_standin_resnet50(path: Path) -> dict[str, torch.Tensor]:
    """standin_resnet50() saved to `path` (a backbone file, as --weights-backbone reads it); returns the state."""
    state = standin_resnet50()
    torch.save(state, path)
    return state

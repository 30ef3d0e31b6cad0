"""Write the embedded default: a small synthetic dataset in the COCO 2017 layout.

The dataset exists so that the real loading, training and evaluation code runs on a machine
without COCO. It has the quirks the loaders must handle: polygons (one instance made of two
parts), compressed and uncompressed RLE, crowd regions, non-contiguous category ids,
grayscale and CMYK JPEGs, images with no annotation and a degenerate box.

It is also designed to be learnable from scratch in a few hundred CPU iterations, so that the
demo shows a real AP: each category has its own colour (with distinct brightness, so grayscale
images stay readable) and its own shape, objects do not overlap, and the background is plain.

    python synthetic_coco.py --output data/synthetic --seed 0

The keypoint variant (generate_keypoints, --keypoints) writes the same layout with COCO's person
keypoint files, annotations/person_keypoints_{train,val}2017.json (and instances_* files with the
same images and objects): stick figures, each with the 17 COCO person keypoints. The figures face
the viewer, so a person's left side is on the image's right, as in COCO photographs; a horizontal
flip that swaps left and right keypoints keeps that rule, so flipped images are still learnable.

    python synthetic_coco.py --keypoints --output data/synthetic_kp --num-train 256 --num-val 64 --seed 0
"""

import argparse
import colorsys
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from coco_utils import MIN_KEYPOINTS_PER_IMAGE
from transforms import COCO_PERSON_KEYPOINT_NAMES

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


SHAPES = {2: _disc, 5: _square, 11: _triangle, 17: _bars}


def _round_polygons(polygons: list[list[float]]) -> list[list[float]]:
    return [[round(v, 2) for v in poly] for poly in polygons]


def _bbox_of_polygons(polygons: list[list[float]]) -> list[float]:
    xs = [v for poly in polygons for v in poly[0::2]]
    ys = [v for poly in polygons for v in poly[1::2]]
    return [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]


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
            {
                "segmentation": segmentation,
                "bbox": _bbox_of_polygons(polygons),
                "area": area,
                "iscrowd": 0,
                "category_id": category_id,
            }
        )
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

    file_name = f"{image_id:012d}.jpg"
    mode = rng.choices(["RGB", "L", "CMYK"], weights=[0.88, 0.1, 0.02])[0]
    image.convert(mode).save(split_dir / file_name, quality=92)
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}, annotations


def _write_images(
    root: Path, split: str, num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int, make_image
):
    """Draw a split's images with make_image(rng, np_rng, image_id, split_dir, with_objects); return its images and
    annotations."""
    split_dir = root / f"{split}2017"
    split_dir.mkdir(parents=True, exist_ok=True)
    np_rng = np.random.default_rng(rng.randrange(2**32))
    images, annotations = [], []
    image_id, ann_id = first_image_id, first_ann_id
    for index in range(num_images):
        # Every 50th image has no objects: dropped for training, kept for evaluation.
        image, anns = make_image(rng, np_rng, image_id, split_dir, index % 50 != 49)
        images.append(image)
        for ann in anns:
            ann.update(id=ann_id, image_id=image_id)
            annotations.append(ann)
            ann_id += rng.randint(1, 3)
        image_id += rng.randint(1, 7)  # sparse ids, as in COCO
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    return images, annotations


def write_split(
    root: Path, split: str, num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int
) -> dict:
    images, annotations = _write_images(root, split, num_images, rng, first_image_id, first_ann_id, _make_image)
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, (name, _) in CATEGORIES.items()]
    data = {
        "info": {"description": f"synthetic shapes, {split} split", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
        json.dump(data, f)
    return data


def generate(root: str | Path, num_train: int = 512, num_val: int = 64, seed: int = 0, keypoints: bool = False) -> Path:
    """Write `root/{train2017,val2017,annotations}` (with `keypoints`, the person keypoint variant); the same seed
    gives the same files."""
    root = Path(root)
    rng = random.Random(seed)
    write = write_keypoint_split if keypoints else write_split
    write(root, "train", num_train, rng, first_image_id=1, first_ann_id=1)
    write(root, "val", num_val, rng, first_image_id=100000, first_ann_id=500000)
    return root


# ----------------------------------------------------------------------------- keypoint variant

# COCO's person skeleton: pairs of 1-based indices into COCO_PERSON_KEYPOINT_NAMES.
COCO_PERSON_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip
PERSON_CATEGORY = {
    "id": 1,
    "name": "person",
    "supercategory": "person",
    "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
    "skeleton": COCO_PERSON_SKELETON,
}
# Share of in-image keypoints labelled v=1 ("labelled but not visible"): only the label changes, the figure is drawn
# whole, which is enough to exercise the loaders' and evaluation's handling of v=1.
OCCLUDED_RATE = 0.05
OFF_EDGE_RATE = 0.2  # share of figures allowed to run off the image, so that some keypoints get v=0


@dataclass
class _Figure:
    """A stick figure in continuous pixel coordinates (pixel i spans [i, i + 1))."""

    keypoints: list[tuple[float, float]]  # in COCO_PERSON_KEYPOINT_NAMES order
    head: tuple[float, float, float]  # centre x, centre y, radius
    line_width: int
    colour: tuple[int, int, int]

    def moved(self, dx: float, dy: float) -> "_Figure":
        keypoints = [(x + dx, y + dy) for x, y in self.keypoints]
        hx, hy, r = self.head
        return _Figure(keypoints, (hx + dx, hy + dy, r), self.line_width, self.colour)

    def outline(self) -> list[tuple[float, float]]:
        """Points around everything drawn: the head's rim and a ring around each body joint (half a pixel out,
        to cover the edge pixels); limbs and torso lie within the hull of the joints' rings."""
        hx, hy, r = self.head
        r += 0.5
        points = [(hx + r * math.cos(2 * math.pi * k / 16), hy + r * math.sin(2 * math.pi * k / 16)) for k in range(16)]
        half = self.line_width / 2 + 0.5
        for x, y in self.keypoints[5:]:  # the body joints, after the five face keypoints (all on the head)
            points += [(x + half * math.cos(math.pi * k / 4), y + half * math.sin(math.pi * k / 4)) for k in range(8)]
        return points

    def extent(self) -> tuple[float, float, float, float]:
        xs, ys = zip(*self.outline())
        return min(xs), min(ys), max(xs), max(ys)


def _limb(start: tuple[float, float], length: float, degrees: float, side: int) -> tuple[float, float]:
    """The end of a limb `degrees` away from pointing straight down, turned outwards (towards `side` in x)."""
    angle = math.radians(degrees)
    return start[0] + side * length * math.sin(angle), start[1] + length * math.cos(angle)


def _bright_colour(rng: random.Random) -> tuple[int, int, int]:
    """A saturated colour, lightened until it is bright in luma too (JPEG keeps luma sharper than colour)."""
    rgb = [255 * c for c in colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 0.9), 1.0)]
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    mix = max(0.0, (150 - luma) / (255 - luma))
    return tuple(round(c + mix * (255 - c)) for c in rgb)


def _pose(rng: random.Random, size: float) -> _Figure:
    """A figure about `size` tall with its head's top at y = 0 and its spine at x = 0, in a random pose."""
    r = 0.1 * size
    hx, hy = rng.uniform(-0.03, 0.03) * size, r
    shoulder_y = 2 * r + 0.03 * size
    hip_y = shoulder_y + rng.uniform(0.27, 0.32) * size
    shoulder_half, hip_half = rng.uniform(0.13, 0.18) * size, rng.uniform(0.07, 0.1) * size
    points = {
        "nose": (hx, hy + 0.25 * r),
        "left_eye": (hx + 0.35 * r, hy - 0.15 * r),
        "right_eye": (hx - 0.35 * r, hy - 0.15 * r),
        "left_ear": (hx + 0.85 * r, hy),
        "right_ear": (hx - 0.85 * r, hy),
    }
    # Facing the viewer: the person's left side is at larger x.
    for side, sign in (("left", 1), ("right", -1)):
        shoulder, hip = (sign * shoulder_half, shoulder_y), (sign * hip_half, hip_y)
        arm, leg = rng.uniform(-10, 120), rng.uniform(-5, 30)
        elbow = _limb(shoulder, 0.18 * size, arm, sign)
        knee = _limb(hip, 0.25 * size, leg, sign)
        points.update(
            {
                f"{side}_shoulder": shoulder,
                f"{side}_elbow": elbow,
                f"{side}_wrist": _limb(elbow, 0.16 * size, arm + rng.uniform(-60, 60), sign),
                f"{side}_hip": hip,
                f"{side}_knee": knee,
                f"{side}_ankle": _limb(knee, 0.22 * size, leg + rng.uniform(-25, 25), sign),
            }
        )
    keypoints = [points[name] for name in COCO_PERSON_KEYPOINT_NAMES]
    return _Figure(keypoints, (hx, hy, r), rng.choice([3, 4]), _bright_colour(rng))


def _in_image(x: float, y: float, width: int, height: int) -> bool:
    return 0 <= x < width and 0 <= y < height


def _visible_count(figure: _Figure, width: int, height: int) -> int:
    return sum(_in_image(round(x, 2), round(y, 2), width, height) for x, y in figure.keypoints)


def _random_figure(rng: random.Random, width: int, height: int) -> _Figure | None:
    """A posed figure at a random place: inside the image, or now and then partly off an edge."""
    figure = _pose(rng, rng.uniform(40, 90))
    x0, y0, x1, y1 = figure.extent()
    slack = 0.35 if rng.random() < OFF_EDGE_RATE else 0.0
    x_range = (1 - x0 - slack * (x1 - x0), width - 1 - x1 + slack * (x1 - x0))
    y_range = (1 - y0 - slack * (y1 - y0), height - 1 - y1 + slack * (y1 - y0))
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None  # too wide (arms raised) or too tall for this image
    return figure.moved(rng.uniform(*x_range), rng.uniform(*y_range))


def _apart(a: _Figure, b: _Figure, gap: float = 3) -> bool:
    ax0, ay0, ax1, ay1 = a.extent()
    bx0, by0, bx1, by1 = b.extent()
    return ax1 + gap < bx0 or bx1 + gap < ax0 or ay1 + gap < by0 or by1 + gap < ay0


def _place_figures(rng: random.Random, width: int, height: int, count: int) -> list[_Figure]:
    """Up to `count` figures that do not overlap, each with at least MIN_KEYPOINTS_PER_IMAGE keypoints in the image
    (so every image passes coco_utils' rule for keypoint training images, the reference's)."""
    figures: list[_Figure] = []
    for _ in range(count * 30):
        if len(figures) == count:
            break
        figure = _random_figure(rng, width, height)
        if (
            figure
            and _visible_count(figure, width, height) >= MIN_KEYPOINTS_PER_IMAGE
            and all(_apart(figure, f) for f in figures)
        ):
            figures.append(figure)
    return figures


def _pil(x: float, y: float) -> tuple[float, float]:
    """PIL puts pixel i's centre at coordinate i; ours is at i + 0.5."""
    return x - 0.5, y - 0.5


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float, colour: tuple[int, ...]) -> None:
    px, py = _pil(x, y)
    draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=colour)


def _draw_figure(draw: ImageDraw.ImageDraw, figure: _Figure) -> None:
    named = dict(zip(COCO_PERSON_KEYPOINT_NAMES, figure.keypoints))
    colour, width = figure.colour, figure.line_width
    hx, hy, r = figure.head
    shoulders = [named["left_shoulder"], named["right_shoulder"]]
    hips = [named["right_hip"], named["left_hip"]]
    draw.polygon([_pil(*p) for p in shoulders + hips], fill=colour)
    neck = ((shoulders[0][0] + shoulders[1][0]) / 2, shoulders[0][1])
    draw.line([_pil(hx, hy), _pil(*neck)], fill=colour, width=width)
    for side in ("left", "right"):
        for limb in (("shoulder", "elbow", "wrist"), ("hip", "knee", "ankle")):
            draw.line([_pil(*named[f"{side}_{joint}"]) for joint in limb], fill=colour, width=width, joint="curve")
    # Round joints, so that the pixel under every body keypoint is drawn.
    for x, y in figure.keypoints[5:]:  # the body joints
        _dot(draw, x, y, width / 2, colour)
    _dot(draw, hx, hy, r, colour)
    for x, y in (named["left_eye"], named["right_eye"]):
        _dot(draw, x, y, 1, (255, 255, 255))


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Andrew's monotone chain, counter-clockwise."""
    points = sorted(set(points))

    def half(sequence: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in sequence:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return half(points) + half(points[::-1])


def _person_annotation(rng: random.Random, figure: _Figure, width: int, height: int) -> dict:
    """COCO fields of one person; its outline (clipped to the image) gives the polygon, box and area."""
    keypoints: list[float] = []
    for x, y in figure.keypoints:
        x, y = round(x, 2), round(y, 2)
        if not _in_image(x, y, width, height):
            keypoints += [0, 0, 0]
        else:
            keypoints += [x, y, 1 if rng.random() < OCCLUDED_RATE else 2]
    clipped = [(min(max(x, 0.0), width), min(max(y, 0.0), height)) for x, y in figure.outline()]
    polygon = [round(v, 2) for point in _convex_hull(clipped) for v in point]
    area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))))
    return {
        "segmentation": [polygon],
        "bbox": _bbox_of_polygons([polygon]),
        "area": area,
        "iscrowd": 0,
        "category_id": PERSON_CATEGORY["id"],
        "keypoints": keypoints,
        "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
    }


def _make_keypoint_image(
    rng: random.Random, np_rng: np.random.Generator, image_id: int, split_dir: Path, with_persons: bool
) -> tuple[dict, list[dict]]:
    width, height = rng.choice(IMAGE_SIZES)
    image = Image.fromarray(_background(rng, np_rng, width, height), "RGB")
    draw = ImageDraw.Draw(image)
    figures = _place_figures(rng, width, height, rng.randint(1, 2)) if with_persons else []
    annotations = []
    for figure in figures:
        _draw_figure(draw, figure)
        annotations.append(_person_annotation(rng, figure, width, height))
    file_name = f"{image_id:012d}.jpg"
    image.save(split_dir / file_name, quality=92)
    return {"id": image_id, "file_name": file_name, "width": width, "height": height}, annotations


def _without_keypoints(data: dict) -> dict:
    """The instances_* file: COCO's detection and segmentation view of the same images and objects."""
    keypoint_fields = ("keypoints", "num_keypoints", "skeleton")
    strip = [{k: v for k, v in item.items() if k not in keypoint_fields} for item in data["annotations"]]
    categories = [{k: v for k, v in item.items() if k not in keypoint_fields} for item in data["categories"]]
    return {**data, "annotations": strip, "categories": categories}


def write_keypoint_split(
    root: Path, split: str, num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int
) -> dict:
    """Write one split's images, person_keypoints_{split}2017.json and instances_{split}2017.json; return the former's
    data."""
    images, annotations = _write_images(
        root, split, num_images, rng, first_image_id, first_ann_id, _make_keypoint_image
    )
    data = {
        "info": {"description": f"synthetic stick figures, {split} split", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [PERSON_CATEGORY],
    }
    with open(root / "annotations" / f"person_keypoints_{split}2017.json", "w") as f:
        json.dump(data, f)
    with open(root / "annotations" / f"instances_{split}2017.json", "w") as f:
        json.dump(_without_keypoints(data), f)
    return data


def generate_keypoints(root: str | Path, num_train: int = 256, num_val: int = 64, seed: int = 0) -> Path:
    """Write the keypoint variant to `root/{train2017,val2017,annotations}`; the same seed gives the same files."""
    return generate(root, num_train, num_val, seed, keypoints=True)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keypoints", action="store_true", help="write the person keypoint variant (stick figures) instead"
    )
    parser.add_argument(
        "--output", default=None, help="folder to write the dataset into (data/synthetic, or data/synthetic_kp)"
    )
    parser.add_argument("--num-train", type=int, default=None, help="training images (512, or 256 with --keypoints)")
    parser.add_argument("--num-val", type=int, default=64, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(args: argparse.Namespace) -> None:
    write, output, num_train = (
        (generate_keypoints, "data/synthetic_kp", 256) if args.keypoints else (generate, "data/synthetic", 512)
    )
    num_train = num_train if args.num_train is None else args.num_train
    root = write(args.output or output, num_train, args.num_val, args.seed)
    print(f"wrote {num_train} training and {args.num_val} validation images to {root}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

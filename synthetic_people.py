"""The keypoint variant of the synthetic data (synthetic.py): stick figures, each with the 17 COCO person keypoints,
in the COCO 2017 layout with COCO's person keypoint files, annotations/person_keypoints_{train,val}2017.json (and
instances_* files with the same images and objects).

    generate_keypoints(root, num_train=256, num_val=64, seed=0)      # what `make demo-kp` trains on

The figures face the viewer, so a person's left side is on the image's right, as in COCO photographs; a horizontal
flip that swaps left and right keypoints keeps that rule, so flipped images are still learnable.
"""

import colorsys
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from coco_utils import MIN_KEYPOINTS_PER_IMAGE
from synthetic import (
    bbox_of_polygons,
    canvas,
    draw_split,
    generate_with,
    image_entry,
    polygons_area,
    write_annotations,
    write_split,
)
from transforms import COCO_PERSON_KEYPOINT_NAMES

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
    return {
        "segmentation": [polygon],
        "bbox": bbox_of_polygons([polygon]),
        "area": polygons_area([polygon], width, height),
        "iscrowd": 0,
        "category_id": PERSON_CATEGORY["id"],
        "keypoints": keypoints,
        "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
    }


def _make_keypoint_image(
    rng: random.Random, np_rng: np.random.Generator, image_id: int, with_persons: bool
) -> tuple[dict, Image.Image, list[dict]]:
    image, draw = canvas(rng, np_rng)
    width, height = image.size
    figures = _place_figures(rng, width, height, rng.randint(1, 2)) if with_persons else []
    annotations = []
    for figure in figures:
        _draw_figure(draw, figure)
        annotations.append(_person_annotation(rng, figure, width, height))
    return image_entry(image_id, width, height), image, annotations


KEYPOINT_FIELDS = ("keypoints", "num_keypoints", "skeleton")


def _without_keypoints(items: list[dict]) -> list[dict]:
    """For the instances_* file: COCO's detection and segmentation view of the same images and objects."""
    return [{k: v for k, v in item.items() if k not in KEYPOINT_FIELDS} for item in items]


def write_keypoint_split(
    root: Path, split: str, num_images: int, rng: random.Random, first_image_id: int, first_ann_id: int
) -> list[dict]:
    """Write one split's images, person_keypoints_{split}2017.json and instances_{split}2017.json; return the image
    entries."""
    images, annotations = draw_split(num_images, rng, first_image_id, first_ann_id, _make_keypoint_image)
    info = {"description": f"synthetic stick figures, {split} split", "version": "1.0"}
    entries = write_split(
        root, split, images, annotations, [PERSON_CATEGORY], info=info, licenses=[], kind="person_keypoints"
    )
    path = root / "annotations" / f"instances_{split}2017.json"
    categories = _without_keypoints([PERSON_CATEGORY])
    write_annotations(path, entries, _without_keypoints(annotations), categories, info=info, licenses=[])
    return entries


def generate_keypoints(root: str | Path, num_train: int = 256, num_val: int = 64, seed: int = 0) -> Path:
    """Write the keypoint variant to `root/{train2017,val2017,annotations}`; the same seed gives the same files."""
    return generate_with(write_keypoint_split, root, num_train, num_val, seed)

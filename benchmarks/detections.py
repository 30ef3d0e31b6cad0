"""Inputs for the benchmarks: COCO-style ground truth and Mask R-CNN-like raw outputs, made up here.

Ground truth: 1 to 14 instances per image (7 on average), sides log-uniform from 8 to 400 px,
irregular ellipses as polygons, and a crowd region (uncompressed RLE) in about one image in eight;
20 categories with ids spread over 1..90, as COCO's.
Detections: a fixed number per image (100, as Mask R-CNN keeps), 70% around a ground-truth instance
(a jittered box, mostly its category, and a 28x28 mask that is that instance seen from the
detection's box, with soft edges and a little noise), the rest anywhere (a random blob, a random
category); scores are float32, higher around ground truth. Like the model's, the raw masks live in
box coordinates and are pasted into the image by the evaluation.
"""

import numpy as np
import torch
from pycocotools import mask as mask_utils

IMAGE_SIZES = ((480, 640), (640, 480), (427, 640))  # (height, width), COCO's most common
MASK_SIZE = 28


class Shape:
    """An irregular ellipse: centre, semi-axes, rotation and a wobble of its radius with the angle."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray, axes: np.ndarray):
        self.centre, self.axes = centre, axes
        self.angle = rng.uniform(0, np.pi)
        self.wobble = (rng.uniform(0, 0.2), int(rng.integers(2, 6)), rng.uniform(0, 2 * np.pi))

    def _radius(self, phi: np.ndarray) -> np.ndarray:
        amount, lobes, phase = self.wobble
        return 1 + amount * np.sin(lobes * phi + phase)

    def distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """< 1 inside, > 1 outside: the ellipse's normalised radius over the wobbled boundary's."""
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        u = ((x - self.centre[0]) * cos + (y - self.centre[1]) * sin) / self.axes[0]
        v = (-(x - self.centre[0]) * sin + (y - self.centre[1]) * cos) / self.axes[1]
        return np.hypot(u, v) / self._radius(np.arctan2(v, u))

    def polygon(self, points: int = 24) -> list[float]:
        phi = np.linspace(0, 2 * np.pi, points, endpoint=False)
        r = self._radius(phi)
        u, v = r * np.cos(phi) * self.axes[0], r * np.sin(phi) * self.axes[1]
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        x, y = self.centre[0] + u * cos - v * sin, self.centre[1] + u * sin + v * cos
        return np.stack([x, y], axis=1).ravel().round(2).tolist()


def _random_shape(rng: np.random.Generator, height: int, width: int) -> Shape:
    sides = np.exp(rng.uniform(np.log(8), np.log(400), size=2))
    centre = rng.uniform(0, 1, size=2) * [width, height]
    return Shape(rng, centre, sides / 2)


def _polygon_annotation(shape: Shape, height: int, width: int, category_id: int) -> dict | None:
    polygon = shape.polygon()
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    area = float(mask_utils.area(rle))
    if area < 4:
        return None  # (nearly) all outside the image
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {"segmentation": [polygon], "area": area, "bbox": bbox, "iscrowd": 0, "category_id": category_id}


def _crowd_annotation(rng: np.random.Generator, height: int, width: int, category_id: int) -> dict:
    shape = Shape(rng, rng.uniform(0.3, 0.7, size=2) * [width, height], rng.uniform(60, 160, size=2))
    y, x = np.mgrid[:height, :width] + 0.5
    binary = shape.distance(x, y) < 1
    flat = binary.flatten(order="F")
    runs = np.diff(np.r_[0, np.flatnonzero(flat[1:] != flat[:-1]) + 1, flat.size])
    counts = ([0] if flat[0] else []) + runs.tolist()  # COCO counts start with a run of 0s
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {
        "segmentation": {"size": [height, width], "counts": counts},
        "area": float(binary.sum()),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 1,
        "category_id": category_id,
    }


def ground_truth(
    num_images: int, seed: int = 0, sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES
) -> tuple[dict, dict[int, list[tuple[Shape, int]]]]:
    """A COCO annotation dict (image sizes taken in turn from `sizes`), and per image id its instances' (shape,
    category id)."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(rng.choice(np.arange(1, 91), size=20, replace=False).tolist())
    images, annotations, instances = [], [], {}
    for index in range(num_images):
        image_id = 1000 + 7 * index
        height, width = sizes[index % len(sizes)]
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": height, "width": width})
        instances[image_id] = []
        for _ in range(int(rng.integers(1, 15))):
            shape, category_id = _random_shape(rng, height, width), int(rng.choice(category_ids))
            annotation = _polygon_annotation(shape, height, width, category_id)
            if annotation is not None:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
                instances[image_id].append((shape, category_id))
        if rng.random() < 1 / 8:
            crowd = _crowd_annotation(rng, height, width, int(rng.choice(category_ids)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **crowd})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, instances


def _box_around(rng: np.random.Generator, shape: Shape, height: int, width: int) -> np.ndarray:
    """A detection box near the instance's tight box: each side moved by up to ~15% of the box."""
    outline = np.array(shape.polygon(64)).reshape(-1, 2)
    box = np.r_[outline.min(axis=0), outline.max(axis=0)]
    size = np.r_[box[2:] - box[:2], box[2:] - box[:2]]
    return box + rng.normal(0, 0.07, size=4) * size


def _clip(box: np.ndarray, height: int, width: int) -> np.ndarray:
    x0, x1 = np.clip(np.sort(box[0::2]), 0, width)
    y0, y1 = np.clip(np.sort(box[1::2]), 0, height)
    return np.array([x0, y0, max(x1, min(x0 + 1, width)), max(y1, min(y0 + 1, height))])


def _mask_in_box(rng: np.random.Generator, shape: Shape, box: np.ndarray) -> np.ndarray:
    """The shape seen through the box on a 28x28 grid, as sigmoid probabilities with soft edges."""
    steps = (np.arange(MASK_SIZE) + 0.5) / MASK_SIZE
    x, y = np.meshgrid(box[0] + steps * (box[2] - box[0]), box[1] + steps * (box[3] - box[1]))
    sharpness = rng.uniform(3, 10)
    logits = (1 - shape.distance(x, y)) * sharpness + rng.normal(0, 0.3, size=x.shape)
    return 1 / (1 + np.exp(-logits))


def raw_detections(gt: dict, instances: dict, per_image: int = 100, seed: int = 0) -> dict[int, dict]:
    """Mask R-CNN-like outputs before pasting, per image id: boxes (xyxy), scores, labels,
    raw_masks (N, 1, 28, 28) and image_size, as CocoEvaluator.update takes them."""
    rng = np.random.default_rng(seed + 1)
    category_ids = [c["id"] for c in gt["categories"]]
    outputs = {}
    for image in gt["images"]:
        height, width = image["height"], image["width"]
        boxes, labels, scores, masks = [], [], [], []
        for i in range(per_image):
            near = instances[image["id"]] and i < 0.7 * per_image
            if near:
                shape, category_id = instances[image["id"]][int(rng.integers(len(instances[image["id"]])))]
                box = _clip(_box_around(rng, shape, height, width), height, width)
                label = category_id if rng.random() < 0.8 else int(rng.choice(category_ids))
                score = rng.uniform(0.2, 1.0)
            else:
                shape = _random_shape(rng, height, width)
                box = _clip(np.r_[shape.centre - shape.axes, shape.centre + shape.axes], height, width)
                label, score = int(rng.choice(category_ids)), rng.uniform(0.0, 0.6)
            boxes.append(box)
            labels.append(label)
            scores.append(score)
            masks.append(_mask_in_box(rng, shape, box))
        order = np.argsort(scores)[::-1]  # the model returns detections by decreasing score
        outputs[image["id"]] = {
            "boxes": torch.tensor(np.array(boxes)[order], dtype=torch.float32),
            "scores": torch.tensor(np.array(scores)[order], dtype=torch.float32),
            "labels": torch.tensor(np.array(labels)[order], dtype=torch.int64),
            "raw_masks": torch.tensor(np.array(masks)[order], dtype=torch.float32)[:, None],
            "image_size": (height, width),
        }
    return outputs

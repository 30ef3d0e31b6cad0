"""Pictures of detections and annotations: an image with masks, boxes, captions and keypoints drawn on it by
torchvision.utils, every caption inside the picture, each class in its own colour.

Shared by predict.py (its pictures) and reporting.py (the report's gallery). Three sources draw the same way: a model's
output (draw_predictions), an annotation file's instances (GroundTruth, predict.py --ground-truth) and COCO entries,
annotations or results (draw_entries).
"""

import json
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

import annotations
import errors
from errors import DataError
from masks import MASK_THRESHOLD, SEGMENTATION_ERRORS, decode_masks

# Distinct colours, one per class (label modulo their number).
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0),
]  # fmt: skip
LABEL_FONT = ImageFont.load_default()  # what torchvision's draw_bounding_boxes writes with when given no font
BOX_WIDTH = 2
SIDE_BY_SIDE_GAP = 4  # white pixels between the ground truth and the predictions


def _enlarged(image: torch.Tensor, upscale_to: int) -> tuple[torch.Tensor, float]:
    """`image` enlarged to `upscale_to` pixels on its shorter side (never shrunk), and the scale."""
    height, width = image.shape[-2:]
    scale = max(1.0, upscale_to / min(height, width))
    if scale == 1:
        return image, 1.0
    return F.resize(image, [round(height * scale), round(width * scale)], antialias=True), scale


def label_anchors(boxes: torch.Tensor, captions: list[str], height: int, width: int) -> torch.Tensor:
    """Where to write each box's caption so that it lies inside the picture: at the box's top left corner, as
    torchvision writes it, moved up or left where the caption would run past the bottom or right edge."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = BOX_WIDTH + 1  # torchvision's text offset from the box corner
    anchors = boxes.clone()
    for i, caption in enumerate(captions):
        _, _, text_width, text_height = measure.textbbox((0, 0), caption, font=LABEL_FONT)
        anchors[i, 0] = min(max(float(boxes[i, 0]), 0.0), max(width - text_width - 2 * margin, 0))
        anchors[i, 1] = min(max(float(boxes[i, 1]), 0.0), max(height - text_height - 2 * margin, 0))
    return anchors


def draw_instances(
    picture: torch.Tensor,
    boxes: torch.Tensor,
    captions: list[str],
    colors: list[tuple[int, int, int]],
    masks: torch.Tensor | None = None,
    keypoints: torch.Tensor | None = None,
    skeleton: list[list[int]] | None = None,
) -> torch.Tensor:
    """Masks (bool, N x H x W), then boxes, then their captions, inside the picture, then keypoints (N x K x 3:
    x, y, visibility), on `picture` (uint8, 3 x H x W) with torchvision.utils."""
    if not len(boxes):  # torchvision warns on every image with no box to draw
        return picture
    if masks is not None:
        picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors=colors)
    picture = draw_bounding_boxes(picture, boxes, colors=colors, width=BOX_WIDTH)
    # width 0: the captions alone, written where they fit (a box at the bottom edge would lose its caption)
    anchors = label_anchors(boxes, captions, *picture.shape[-2:])
    picture = draw_bounding_boxes(picture, anchors, captions, colors=colors, width=0, fill_labels=True)
    if keypoints is not None:
        connectivity = [(a - 1, b - 1) for a, b in skeleton] if skeleton else None
        visible = keypoints[..., 2] > 0
        picture = draw_keypoints(
            picture, keypoints[..., :2], connectivity, colors="white", radius=2, width=2, visibility=visible
        )
    return picture


def _color(label: int) -> tuple[int, int, int]:
    return PALETTE[label % len(PALETTE)]


def draw_predictions(
    image: torch.Tensor, prediction: dict, names: list[str], score_thresh: float, upscale_to: int = 0, skeleton=None
) -> torch.Tensor:
    """`image` (uint8, 3 x H x W) with the detections scoring at least `score_thresh` drawn on it:
    masks, then boxes labelled "name score", then keypoints; enlarged first to `upscale_to` pixels
    on its shorter side, so the labels' fixed-size font stays readable on small images."""
    keep = prediction["scores"] >= score_thresh
    picture, scale = _enlarged(image, upscale_to)
    labels = prediction["labels"][keep].tolist()
    masks = None
    if "masks" in prediction:
        probabilities = prediction["masks"][keep][:, 0]
        if scale > 1:
            probabilities = F.resize(probabilities, list(picture.shape[-2:]), antialias=False)
        masks = probabilities > MASK_THRESHOLD
    keypoints = prediction["keypoints"][keep] * torch.tensor([scale, scale, 1.0]) if "keypoints" in prediction else None
    captions = [f"{names[label]} {score:.2f}" for label, score in zip(labels, prediction["scores"][keep].tolist())]
    colors = [_color(label) for label in labels]
    return draw_instances(picture, prediction["boxes"][keep] * scale, captions, colors, masks, keypoints, skeleton)


class GroundTruth:
    """An annotation file's instances, image by image, to draw (`--ground-truth`)."""

    def __init__(self, path: Path, reader: annotations.AnnotationReader = annotations.COCO_JSON):
        try:
            self.table = reader.read(path)
        except DataError as e:
            raise errors.UsageError(f"--ground-truth: {e}") from None
        self.names = {c.id: c.name or str(c.id) for c in self.table.categories}
        self.use_labels(None)
        self._rows_of_image: dict[int, list[int]] = defaultdict(list)
        for ann_row, image_row in enumerate(self.table.image_of_ann.tolist()):
            self._rows_of_image[image_row].append(ann_row)

    def use_labels(self, label_to_category_id: list[int] | None) -> None:
        """Colour each category as a model labels it, so that a class has one colour on both sides; without a model,
        as labels 1..K in category id order."""
        ids = label_to_category_id or [0, *sorted(self.names)]
        self.label_of = {category_id: label for label, category_id in enumerate(ids) if label}

    def count(self, row: int) -> int:
        """How many annotations image `row` has."""
        return len(self._rows_of_image.get(row, []))

    def size(self, row: int) -> tuple[int, int]:
        """Image `row`'s (width, height) as the file lists it."""
        return int(self.table.widths[row]), int(self.table.heights[row])

    def draw(self, image: torch.Tensor, row: int, upscale_to: int = 0) -> torch.Tensor:
        """Image `row`'s annotations on `image`: masks, xywh boxes as drawn boxes, category names (crowd regions
        marked as such), keypoints where the file has them."""
        table, rows = self.table, self._rows_of_image.get(row, [])
        picture, scale = _enlarged(image, upscale_to)
        boxes = torch.from_numpy(table.boxes_xywh[rows]).reshape(-1, 4).clone()
        boxes[:, 2:] += boxes[:, :2]
        category_ids = table.category_ids[rows].tolist()
        crowd = table.crowd[rows].tolist()
        captions = [f"{self.names[c]}{' (crowd)' if is_crowd else ''}" for c, is_crowd in zip(category_ids, crowd)]
        colors = [_color(self.label_of.get(c, c)) for c in category_ids]
        masks = self._masks(rows, *image.shape[-2:])
        return _draw_enlarged(picture, scale, boxes, captions, colors, masks, self._keypoints(rows, scale))

    def _masks(self, rows: list[int], height: int, width: int) -> torch.Tensor:
        try:
            segmentations = [json.loads(bytes(self.table.segmentations[r])) for r in rows]
            return torch.from_numpy(decode_masks(segmentations, height, width).astype(bool))
        except SEGMENTATION_ERRORS as e:
            raise errors.UsageError(
                f"--ground-truth: {self.table.source} has a segmentation it cannot draw ({e})"
            ) from None

    def _keypoints(self, rows: list[int], scale: float) -> torch.Tensor | None:
        values = [self.table.keypoints[r] for r in rows]
        if not values or any(v is None or len(v) != len(values[0]) for v in values) or not values[0]:
            return None
        keypoints = torch.tensor(values, dtype=torch.float32).reshape(len(values), -1, 3)
        return keypoints * torch.tensor([scale, scale, 1.0])


def _draw_enlarged(picture: torch.Tensor, scale: float, boxes: torch.Tensor, captions: list[str], colors: list,
                   masks: torch.Tensor | None, keypoints: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """draw_instances on a picture enlarged by `scale`, of boxes (xyxy) and masks (bool) at the image's size."""
    if masks is not None and scale > 1:
        masks = F.resize(masks.to(torch.uint8), list(picture.shape[-2:]), antialias=False).bool()
    return draw_instances(picture, boxes * scale, captions, colors, masks, keypoints)


def draw_entries(image: torch.Tensor, entries: list[dict], names: dict[int, str], upscale_to: int = 0) -> torch.Tensor:
    """COCO entries on `image` (uint8, 3 x H x W): annotations (captioned with their category's name, crowd regions
    marked) or results (with their score); an entry's "segmentation" (polygons or RLE) as its mask, where every
    entry has one. A category's colour is that of its id (GroundTruth's without a model)."""
    height, width = image.shape[-2:]
    picture, scale = _enlarged(image, upscale_to)
    boxes = torch.tensor([e["bbox"] for e in entries], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    captions = [names.get(e["category_id"], str(e["category_id"]))
                + (f" {e['score']:.2f}" if "score" in e else " (crowd)" if e.get("iscrowd") else "")
                for e in entries]  # fmt: skip
    colors = [_color(e["category_id"]) for e in entries]
    masks = None
    if entries and all("segmentation" in e for e in entries):
        masks = torch.from_numpy(decode_masks([e["segmentation"] for e in entries], height, width).astype(bool))
    return _draw_enlarged(picture, scale, boxes, captions, colors, masks)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two pictures of one image in one, with a white gap between them."""
    gap = torch.full((3, left.shape[1], SIDE_BY_SIDE_GAP), 255, dtype=left.dtype)
    return torch.cat([left, gap, right], dim=2)

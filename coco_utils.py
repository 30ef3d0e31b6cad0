"""The COCO dataset wrapper: annotation files to (image, target) pairs, and the ground truth for evaluation.

Targets follow torchvision's detection models: boxes in xyxy pixels, labels (the dataset's
category ids, so num_classes = largest id + 1, as in the reference), instance masks, image_id.
Crowd regions and degenerate boxes are kept out of targets; the evaluator still sees crowd
regions through the ground truth, which is read from the annotation file, never rebuilt by
running the dataset (vision #1888).
"""

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from utils import UsageError

SPLITS = {"train": "train2017", "val": "val2017"}


def load_coco_json(ann_file: str | Path) -> dict:
    with open(ann_file) as f:
        return json.load(f)


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO index over an in-memory annotation dict, without its console chatter."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict | None:
    """One compressed RLE for a COCO segmentation: polygons (one or several parts), or RLE in
    either form (crowd regions use uncompressed counts). None when there is nothing to draw."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # fewer than 3 points draw nothing
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_masks(segmentations: list, height: int, width: int) -> np.ndarray:
    """Decode COCO segmentations into an (N, H, W) uint8 array; missing ones are all zero."""
    masks = np.zeros((len(segmentations), height, width), dtype=np.uint8)
    for i, segmentation in enumerate(segmentations):
        rle = segmentation_to_rle(segmentation, height, width)
        if rle is not None:
            masks[i] = mask_utils.decode(rle)
    return masks


def annotations_to_target(annotations: list[dict], image_id: int, height: int, width: int, with_masks: bool = True) -> dict:
    """Convert one image's COCO annotations into a detection target; crowd and degenerate boxes are left out."""
    annotations = [a for a in annotations if not a.get("iscrowd", 0)]
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    boxes[:, 0::2].clamp_(min=0, max=width)
    boxes[:, 1::2].clamp_(min=0, max=height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    kept = [a for a, k in zip(annotations, keep.tolist()) if k]
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor([a["category_id"] for a in kept], dtype=torch.int64),
        "image_id": image_id,
    }
    if with_masks:
        target["masks"] = tv_tensors.Mask(torch.from_numpy(decode_masks([a["segmentation"] for a in kept], height, width)))
    return target


def _is_usable(annotation: dict) -> bool:
    """The reference's rule for training images: at least one non-crowd box larger than one pixel."""
    return not annotation.get("iscrowd", 0) and all(side > 1 for side in annotation["bbox"][2:])


class CocoDetection(torch.utils.data.Dataset):
    """Images and detection targets from a COCO-format annotation file.

    With `remove_images_without_annotations` (training), images with no usable annotation are
    dropped, as the reference does; evaluation keeps every image. Image sizes come from the
    annotation file, so aspect-ratio grouping never opens an image.
    """

    def __init__(
        self,
        img_folder: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        remove_images_without_annotations: bool = False,
        with_masks: bool = True,
    ):
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        data = load_coco_json(self.ann_file)
        anns_by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            anns_by_image[ann["image_id"]].append(ann)
        images = data["images"]
        if remove_images_without_annotations:
            images = [img for img in images if any(_is_usable(a) for a in anns_by_image[img["id"]])]
        self.images = [{k: img[k] for k in ("id", "file_name", "width", "height")} for img in images]
        self.annotations = [anns_by_image[img["id"]] for img in self.images]
        self.categories = {c["id"]: c["name"] for c in data["categories"]}
        self._coco: COCO | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> list[int]:
        return [img["id"] for img in self.images]

    @property
    def num_classes(self) -> int:
        """Labels are category ids, so the classifier needs max id + 1 outputs (0 is background)."""
        return max(self.categories) + 1

    @property
    def aspect_ratios(self) -> list[float]:
        return [img["width"] / img["height"] for img in self.images]

    @property
    def coco(self) -> COCO:
        """The ground truth as a pycocotools index, built on first use (evaluation only)."""
        if self._coco is None:
            self._coco = coco_from_dict(load_coco_json(self.ann_file))
        return self._coco

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.img_folder / self.images[index]["file_name"]) as image:
            return image.convert("RGB")  # grayscale and CMYK JPEGs become RGB

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        image = self.load_image(index)
        info = self.images[index]
        target = annotations_to_target(self.annotations[index], info["id"], image.height, image.width, self.with_masks)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def get_coco(root: str | Path, image_set: str, transforms: Callable | None, with_masks: bool = True) -> CocoDetection:
    """The `image_set` ("train" or "val") split of a COCO 2017 layout under `root`."""
    root = Path(root)
    folder = SPLITS[image_set]
    ann_file = root / "annotations" / f"instances_{folder}.json"
    for path in (ann_file, root / folder):
        if not path.exists():
            raise UsageError(
                f"--data-path: {path} is missing; {root} should hold train2017/, val2017/ and annotations/instances_*2017.json "
                "(make data writes a synthetic one)"
            )
    return CocoDetection(
        root / folder,
        ann_file,
        transforms=transforms,
        remove_images_without_annotations=image_set == "train",
        with_masks=with_masks,
    )


def _unwrap_subsets(dataset: torch.utils.data.Dataset) -> tuple[torch.utils.data.Dataset, list[int] | None]:
    """Follow (nested) Subsets down to the base dataset; return it and the indices into it, if any."""
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        outer = list(dataset.indices)
        indices = outer if indices is None else [outer[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def get_coco_api_from_dataset(dataset: torch.utils.data.Dataset) -> COCO:
    """The ground truth that evaluation needs, taken from the annotations (no transforms run).

    For a Subset, the ground truth holds only the subset's images (vision #2619), so
    evaluating a random_split part is not scored against the whole set.
    """
    base, indices = _unwrap_subsets(dataset)
    if not isinstance(base, CocoDetection):
        raise TypeError(f"evaluation needs a CocoDetection (or a Subset of one), got {type(base).__name__}")
    if indices is None and len(base) == len(base.coco.dataset["images"]):
        return base.coco
    keep = set(base.ids) if indices is None else {base.images[i]["id"] for i in indices}
    full = base.coco.dataset
    subset = {key: value for key, value in full.items() if key not in ("images", "annotations")}
    subset["images"] = [img for img in full["images"] if img["id"] in keep]
    subset["annotations"] = [ann for ann in full["annotations"] if ann["image_id"] in keep]
    return coco_from_dict(subset)

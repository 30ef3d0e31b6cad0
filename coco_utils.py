"""COCO-format datasets: the dataset contract, the COCO dataset wrapper, and the ground truth for evaluation.

The contract (`DetectionDataset`, with its `Classes`) is what train.py, engine.py,
group_by_aspect_ratio.py and predict.py rely on; `CocoDetection` fulfils it for any file an
annotations.AnnotationReader reads (COCO's JSON by default).

Targets follow torchvision's detection models: boxes in xyxy pixels, labels, boolean instance
masks, keypoints (N, K, 3) for keypoint datasets, image_id. Labels are either the category ids
themselves (num_classes = largest id + 1, as in the reference, so torchvision's COCO weights fit)
or contiguous 1..K in category id order (num_classes = K + 1, as detectron2 and mmdetection map
a user's own categories); `label_to_category_id` maps them back for evaluation and predictions.
Crowd regions and degenerate boxes are kept out of targets; the evaluator still sees crowd
regions through the ground truth, which is read from the annotation file, never rebuilt by
running the dataset (vision #1888).

At COCO scale (118k images, 860k instances) the dataset keeps its metadata in a few numpy
arrays and two byte strings, not in Python lists of dicts: forked DataLoader workers then share
those pages with the main process instead of copying them one by one as reference counts change
(pytorch #13246). Segmentations stay the JSON text they were written as (exact, and compact) and
are decoded per sample. Every input the user could get wrong is checked at start-up, cheaply,
and reported as one line naming the file (a DataError, which train.py turns into exit status 2).
"""

import ctypes
import json
import operator
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors

from annotations import (
    COCO_JSON,
    AnnotationReader,
    AnnotationTable,
    PackedTexts,
    check_polygons,
    find_positions,
    labelled_categories,
    own_split_files,
    split_files,
)
from coco_eval import coco_index
from errors import DataError, warn
from images import UnreadableImage, check_image_files, read_rgb
from labels import Classes, label_to_category_ids
from masks import SEGMENTATION_ERRORS, decode_masks

# --dataset: the annotation files' prefix in the 2017 layout (coco_kp targets also carry keypoints), and the make
# target that writes a synthetic dataset of that kind.
ANNOTATION_PREFIXES = {"coco": "instances", "coco_kp": "person_keypoints"}
# The reference's rule for keypoint training images: at least this many visible keypoints among their people.
MIN_KEYPOINTS_PER_IMAGE = 10


# ----------------------------------------------------------------------------- the dataset contract


class DetectionDataset(Protocol):
    """What the scripts need of a dataset (CocoDetection is one): items, and what its labels mean.

    - `dataset[i]` is (image, target) and `ids[i]` its image id; `len(dataset)` items.
    - `classes` (and, from it, `num_classes`, `label_to_category_id`, `keypoint_names`): the model's outputs.
    - `aspect_ratios`: width / height per item, read without opening an image (group_by_aspect_ratio).
    - `coco`: the evaluation ground truth as a pycocotools index (get_coco_api_from_dataset).
    """

    ids: list[int]
    classes: Classes
    num_classes: int
    label_to_category_id: list[int]
    keypoint_names: list[str]
    aspect_ratios: list[float]
    coco: COCO

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, dict]: ...


# ----------------------------------------------------------------------------- targets


def clamp_boxes_xywh(
    boxes: np.ndarray, heights: np.ndarray | int, widths: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray]:
    """COCO [x, y, w, h] boxes (float32) to xyxy clamped to their image, and which are non-empty after clamping."""
    xyxy = boxes.astype(np.float32, copy=True).reshape(-1, 4)
    xyxy[:, 2:] += xyxy[:, :2]
    widths = np.asarray(widths, dtype=np.float32).reshape(-1, 1)
    heights = np.asarray(heights, dtype=np.float32).reshape(-1, 1)
    xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 0, widths)
    xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 0, heights)
    return xyxy, (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])


def make_target(
    boxes: np.ndarray,
    labels: np.ndarray,
    image_id: int,
    height: int,
    width: int,
    masks: np.ndarray | None,
    keypoints: np.ndarray | None = None,
) -> dict:
    """A detection target from xyxy boxes, labels and (optionally) masks and (N, K, 3) keypoints;
    copies, so no transform can write into the dataset."""
    boxes_tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes_tensor, format="XYXY", canvas_size=(height, width)),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": image_id,
    }
    if masks is not None:
        # bool, as the reference's masks: torch indexes bool masks 30x faster than uint8 ones (SanitizeBoundingBoxes
        # does masks[valid] on every sample: 0.07 ms against 2 ms at 640x480); the 0/1 bytes are reinterpreted.
        target["masks"] = tv_tensors.Mask(torch.from_numpy(masks).view(torch.bool))
    if keypoints is not None:
        target["keypoints"] = torch.tensor(keypoints, dtype=torch.float32)
    return target


# ----------------------------------------------------------------------------- the dataset


class _ImageRecords(Sequence):
    """The dataset's images as COCO-style dicts (id, file_name, width, height), built on access."""

    def __init__(self, dataset: "CocoDetection"):
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        return self._dataset.image_info(index % len(self))


class CocoDetection(torch.utils.data.Dataset):
    """Images and detection targets from a COCO-format annotation file (a DetectionDataset).

    With `remove_images_without_annotations` (training), images with no usable annotation are
    dropped, as the reference does; evaluation keeps every image. Image sizes come from the
    annotation file, so aspect-ratio grouping never opens an image. Missing image files are found
    at start-up; an unreadable one met later raises a DataError naming it, or with
    `skip_bad_images` is logged once and replaced by the next readable image, so batches keep
    their size and a seeded run stays deterministic. `reader` reads the file's format.
    """

    def __init__(
        self,
        img_folder: str | Path,
        ann_file: str | Path,
        transforms: Callable | None = None,
        remove_images_without_annotations: bool = False,
        with_masks: bool = True,
        skip_bad_images: bool = False,
        with_keypoints: bool = False,
        contiguous_labels: bool = False,
        label_to_category_id: Sequence[int] | None = None,
        reader: AnnotationReader = COCO_JSON,
        min_num_classes: int = 0,
        leave_out_unused_categories: bool = False,
        used_elsewhere: Collection[int] = (),
        require_masks: bool = False,
    ):
        self.img_folder = Path(img_folder)
        self.require_masks = require_masks
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.skip_bad_images = skip_bad_images
        self.reader = reader
        self._coco: COCO | None = None
        self._reported_bad: set[int] = set()
        table = reader.read(self.ann_file)
        self.categories = {c.id: c.name for c in table.categories}
        self.keypoint_names = table.keypoint_names() if with_keypoints else []
        self.keypoint_skeleton = table.keypoint_skeleton() if with_keypoints else []
        if label_to_category_id is None:  # else given: another split's, or a trained model's
            labelled = labelled_categories(table, leave_out_unused_categories, used_elsewhere)
            label_to_category_id = label_to_category_ids(labelled, contiguous_labels, min_num_classes)
        self.label_to_category_id = [int(i) for i in label_to_category_id]
        self._index(table, remove_images_without_annotations)
        del table
        _release_freed_memory()

    def _index(self, table: AnnotationTable, remove_images_without_annotations: bool) -> None:
        """Choose the images and target annotations, and keep compact arrays of what training reads."""
        image_of_ann = table.image_of_ann
        boxes, non_empty = clamp_boxes_xywh(table.boxes_xywh, table.heights[image_of_ann], table.widths[image_of_ann])
        keep_image = np.ones(len(table.image_ids), dtype=bool)
        if remove_images_without_annotations:
            # The reference's rules for training images: at least one non-crowd box larger than one pixel,
            # and in keypoint datasets at least MIN_KEYPOINTS_PER_IMAGE labelled keypoints.
            usable = ~table.crowd & (table.boxes_xywh[:, 2] > 1) & (table.boxes_xywh[:, 3] > 1)
            keep_image = np.bincount(image_of_ann[usable], minlength=len(keep_image)) > 0
            if self.with_keypoints:
                visible = np.bincount(image_of_ann, weights=table.visible_keypoints(), minlength=len(keep_image))
                keep_image &= visible >= MIN_KEYPOINTS_PER_IMAGE
        keep_image &= ~check_image_files(self.img_folder, table, keep_image, self.skip_bad_images)
        self._check_not_empty(len(keep_image), int(keep_image.sum()))
        self._keep_images(table, np.flatnonzero(keep_image))
        # Target annotations (not crowd, a box left after clamping), grouped by image in the kept images' order.
        new_position = np.cumsum(keep_image) - 1
        rows = np.flatnonzero(non_empty & ~table.crowd & keep_image[image_of_ann])
        rows = rows[np.argsort(new_position[image_of_ann[rows]], kind="stable")]
        counts = np.bincount(new_position[image_of_ann[rows]], minlength=len(self._image_ids))
        self._ann_offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._boxes, self._ann_ids = boxes[rows], table.ann_ids[rows]
        self._labels = self._labels_of(table.category_ids[rows])
        texts = [table.segmentations[i] for i in rows.tolist()] if self.with_masks else []
        self._segmentations = PackedTexts(texts)
        self._check_segmentations()
        check_polygons(self.ann_file, texts, self._ann_ids, self.require_masks)
        if self.with_keypoints:
            self._keypoints = table.keypoint_array(rows, len(self.keypoint_names))

    def _labels_of(self, category_ids: np.ndarray) -> np.ndarray:
        """The labels of annotations' category ids; an id with no label stops the run, naming it."""
        labelled = np.asarray(self.label_to_category_id[1:], dtype=np.int64)  # the category ids of labels 1, 2, ...
        positions, found = find_positions(labelled, category_ids)
        if not found.all():
            first = int(category_ids[np.flatnonzero(~found)[0]])
            name = self.categories.get(first, "?")
            if first == 0:
                raise DataError(
                    f"{self.ann_file}: category id 0 ({name}) would be label 0, which detection models keep for the "
                    "background; pass --label-mapping contiguous to number the categories from 1"
                )
            raise DataError(
                f"{self.ann_file}: category id {first} ({name}) is not among the model's categories "
                f"(ids {sorted(labelled.tolist())}); train and evaluate on annotation files with the same categories "
                "(--label-mapping auto labels only the categories that training annotations use; contiguous, all)"
            )
        return positions + 1

    def _keep_images(self, table: AnnotationTable, kept: np.ndarray) -> None:
        self._image_ids, self._widths, self._heights = table.image_ids[kept], table.widths[kept], table.heights[kept]
        encoded = [table.file_names[i].encode() for i in kept.tolist()]
        self._file_names = b"".join(encoded)
        self._file_name_offsets = np.concatenate([[0], np.cumsum([len(n) for n in encoded], dtype=np.int64)])

    def _check_segmentations(self) -> None:
        """Each segmentation must be a list (polygons) or an object (RLE); what is in them is checked when drawn."""
        first = np.frombuffer(self._segmentations.first_bytes(), dtype=np.uint8)
        wrong = np.flatnonzero((first != ord("[")) & (first != ord("{")))
        if len(wrong):
            text = self._segmentations[wrong[0] : wrong[0] + 1][0][:40].decode(errors="replace")
            raise DataError(
                f"{self.ann_file}: annotation id {self._ann_ids[wrong[0]]} has segmentation {text}; a segmentation is "
                'a list of polygons [[x1, y1, x2, y2, ...]] or an RLE {"size": [height, width], "counts": ...}'
            )

    def _check_not_empty(self, listed: int, kept: int) -> None:
        if kept:
            return
        if not listed:
            raise DataError(f"{self.ann_file} lists no images; pass an annotation file with images and annotations")
        raise DataError(
            f"{self.ann_file}: none of its {listed} images has a usable annotation (a non-crowd box wider and taller "
            "than 1 pixel), so there is nothing to train on; check the annotations' bbox values ([x, y, width, height])"
        )

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def ids(self) -> list[int]:
        return self._image_ids.tolist()

    @property
    def images(self) -> Sequence[dict]:
        return _ImageRecords(self)

    def image_info(self, index: int) -> dict:
        """The COCO image entry (id, file_name, width, height) of item `index`."""
        start, end = self._file_name_offsets[index], self._file_name_offsets[index + 1]
        return {
            "id": int(self._image_ids[index]),
            "file_name": self._file_names[start:end].decode(),
            "width": int(self._widths[index]),
            "height": int(self._heights[index]),
        }

    @property
    def classes(self) -> Classes:
        return Classes(
            label_to_category_id=list(self.label_to_category_id),
            categories=[{"id": int(i), "name": name} for i, name in sorted(self.categories.items())],
            keypoint_names=list(self.keypoint_names),
            keypoint_skeleton=self.keypoint_skeleton,
        )

    @property
    def num_classes(self) -> int:
        """The classifier's outputs: one per label, with 0 the background."""
        return len(self.label_to_category_id)

    @property
    def aspect_ratios(self) -> list[float]:
        return (self._widths / self._heights).tolist()

    @property
    def coco(self) -> COCO:
        """The ground truth as a pycocotools index, built on first use (evaluation only)."""
        if self._coco is None:
            self._coco = coco_index(self.reader.ground_truth(self.ann_file))
        return self._coco

    def image_path(self, index: int) -> Path:
        return self.img_folder / self.image_info(index)["file_name"]

    def _read_image(self, index: int) -> Image.Image:
        expected = (int(self._widths[index]), int(self._heights[index]))
        return read_rgb(self.image_path(index), expected, listed_in=self.ann_file.name)

    def _bad_image_message(self, index: int, reason: str) -> str:
        return (
            f"{self.image_path(index)}: cannot use image {self._image_ids[index]} ({reason}); replace the file, "
            f"remove the image from {self.ann_file}, or pass --skip-bad-images to skip bad training images"
        )

    def load_image(self, index: int) -> Image.Image:
        """Item `index`'s image as RGB; a DataError naming the file if it cannot be read or has the wrong size."""
        try:
            return self._read_image(index)
        except UnreadableImage as e:
            raise DataError(self._bad_image_message(index, str(e))) from None

    def _load_readable(self, index: int) -> tuple[Image.Image, int]:
        """Item `index`'s image, or with skip_bad_images the next readable one after it (deterministic, so
        batch sizes and seeded runs are kept); each bad file is reported once per process."""
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            try:
                return self._read_image(candidate), candidate
            except UnreadableImage as e:
                if not self.skip_bad_images:
                    raise DataError(self._bad_image_message(candidate, str(e))) from None
                if candidate not in self._reported_bad:
                    self._reported_bad.add(candidate)
                    warn(f"skipping {self.image_path(candidate)} ({e}); the next readable image takes its place")
        raise DataError(f"none of the {len(self)} images in {self.img_folder} can be read; check the files")

    def _segmentations_of(self, start: int, end: int) -> list:
        # The standard library's parser, as pycocotools reads the file: the same floats, so the same masks.
        return json.loads(b"[" + b",".join(self._segmentations[start:end]) + b"]")

    def _target(self, index: int) -> dict:
        start, end = int(self._ann_offsets[index]), int(self._ann_offsets[index + 1])
        height, width = int(self._heights[index]), int(self._widths[index])
        masks = None
        if self.with_masks:
            segmentations = self._segmentations_of(start, end)
            try:
                masks = decode_masks(segmentations, height, width)
            except SEGMENTATION_ERRORS:
                self._raise_for_bad_segmentation(segmentations, start, height, width)
        image_id = int(self._image_ids[index])
        keypoints = self._keypoints[start:end] if self.with_keypoints else None
        return make_target(self._boxes[start:end], self._labels[start:end], image_id, height, width, masks, keypoints)

    def _raise_for_bad_segmentation(self, segmentations: list, start: int, height: int, width: int) -> None:
        for offset, segmentation in enumerate(segmentations):
            try:
                decode_masks([segmentation], height, width)
            except SEGMENTATION_ERRORS as e:
                raise DataError(
                    f"{self.ann_file}: annotation id {self._ann_ids[start + offset]} has a segmentation that cannot be "
                    f"drawn ({type(e).__name__}: {e}); a segmentation is a list of polygons [[x1, y1, x2, y2, ...]] or "
                    'an RLE {"size": [height, width], "counts": ...}'
                ) from None
        raise AssertionError("a segmentation failed to decode together but not alone")

    def __getitem__(self, index: int) -> tuple[Any, dict]:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image, index = self._load_readable(index % len(self))
        target = self._target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _release_freed_memory() -> None:
    """Give the parse's freed heap back to the OS: glibc keeps it (about 200 MB at COCO scale), and forked
    workers would map it too. A no-op where the C library has no malloc_trim."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no such C library or function (macOS, Windows)
        pass


def get_coco(
    root: str | Path,
    image_set: str,
    transforms: Callable | None,
    with_masks: bool = True,
    skip_bad_images: bool = False,
    *,
    dataset: str = "coco",
    img_folder: str | Path | None = None,
    ann_file: str | Path | None = None,
    contiguous_labels: bool = False,
    label_to_category_id: Sequence[int] | None = None,
    min_num_classes: int = 0,
    leave_out_unused_categories: bool = False,
    used_elsewhere: Collection[int] = (),
    require_masks: bool = False,
    reader: AnnotationReader = COCO_JSON,
) -> CocoDetection:
    """The `image_set` ("train" or "val") split: of the COCO 2017 layout under `root` (`dataset` "coco"
    reads instances_*.json, "coco_kp" person_keypoints_*.json), or of a user's own annotation file and
    image folder when both `ann_file` and `img_folder` are given (--train-annotations/--train-images...), in the
    format `reader` reads (annotations.READERS: --annotation-format)."""
    if img_folder is None or ann_file is None:
        img_folder, ann_file = split_files(Path(root), image_set, ANNOTATION_PREFIXES[dataset])
    else:
        img_folder, ann_file = own_split_files(Path(img_folder), Path(ann_file), image_set)
    return CocoDetection(
        img_folder,
        ann_file,
        transforms=transforms,
        remove_images_without_annotations=image_set == "train",
        with_masks=with_masks,
        skip_bad_images=skip_bad_images,
        with_keypoints=dataset == "coco_kp",
        contiguous_labels=contiguous_labels,
        label_to_category_id=label_to_category_id,
        min_num_classes=min_num_classes,
        leave_out_unused_categories=leave_out_unused_categories,
        used_elsewhere=used_elsewhere,
        require_masks=require_masks,
        reader=reader,
    )


def _unwrap_subsets(dataset: torch.utils.data.Dataset) -> tuple[torch.utils.data.Dataset, list[int] | None]:
    """Follow (nested) Subsets down to the base dataset; return it and the indices into it, if any."""
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        outer = list(dataset.indices)
        indices = outer if indices is None else [outer[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def base_dataset(dataset: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
    """The dataset under any (nested) Subsets."""
    return _unwrap_subsets(dataset)[0]


def get_coco_api_from_dataset(dataset: torch.utils.data.Dataset) -> COCO:
    """The ground truth that evaluation needs, taken from the annotations (no transforms run).

    For a Subset, the ground truth holds only the subset's images (vision #2619), so
    evaluating a random_split part is not scored against the whole set.
    """
    base, indices = _unwrap_subsets(dataset)
    if not hasattr(base, "coco") or not hasattr(base, "ids"):
        raise TypeError(
            f"evaluation needs a dataset with a `coco` ground truth and `ids` (a DetectionDataset, such as "
            f"CocoDetection, or a Subset of one), got {type(base).__name__}"
        )
    if indices is None and len(base) == len(base.coco.dataset["images"]):
        return base.coco
    ids = base.ids
    keep = set(ids) if indices is None else {ids[i] for i in indices}
    full = base.coco.dataset
    subset = {key: value for key, value in full.items() if key not in ("images", "annotations")}
    subset["images"] = [img for img in full["images"] if img["id"] in keep]
    subset["annotations"] = [ann for ann in full["annotations"] if ann["image_id"] in keep]
    return coco_index(subset)

"""The COCO dataset wrapper: annotation files to (image, target) pairs, and the ground truth for evaluation.

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

import contextlib
import ctypes
import io
import json
import operator
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from utils import UsageError

SPLITS = {"train": "train2017", "val": "val2017"}
COCO_FOLDERS = {*SPLITS.values(), "annotations"}
# --dataset: the annotation files' prefix in the 2017 layout (coco_kp targets also carry keypoints), and the make
# target that writes a synthetic dataset of that kind.
ANNOTATION_PREFIXES = {"coco": "instances", "coco_kp": "person_keypoints"}
SYNTHETIC_TARGETS = {"instances": "make data", "person_keypoints": "make data-kp"}
# The reference's rule for keypoint training images: at least this many visible keypoints among their people.
MIN_KEYPOINTS_PER_IMAGE = 10
# What pycocotools raises for a segmentation it cannot draw (wrong nesting, non-numbers, a bad RLE).
SEGMENTATION_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)
# What PIL raises for a file that is not a readable image (truncated, corrupt, not an image at all).
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(UsageError):
    """A problem with the dataset's files, reported as one line naming the file.

    Raised inside a DataLoader worker, it reaches the main process re-raised by torch with the
    worker's whole traceback as its message; the constructor keeps only the original line, so the
    user still reads one line (train.py catches it as a UsageError).
    """

    def __init__(self, message: str):
        if message.startswith(f"Caught {type(self).__name__}") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.partition(f"{type(self).__name__}: ")[2] or last
        super().__init__(message)


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


# ----------------------------------------------------------------------------- masks


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict | None:
    """One compressed RLE for a COCO segmentation: polygons (one or several parts), or RLE in
    either form (crowd regions use uncompressed counts). None when there is nothing to draw."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]  # fewer than 3 points draw nothing
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(f"its RLE size is {list(segmentation['size'])} but the image's [height, width] is {[height, width]}")
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def rle_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths in a compressed COCO RLE string, decoded as pycocotools does (rleFrString), but vectorised.

    Each run is a signed number in 5-bit chunks (0x20 marks "more", 0x10 the sign of the last), offset by 48;
    from the fourth run on, it is stored as the difference to the run two before.
    """
    chars = np.frombuffer(counts.encode() if isinstance(counts, str) else counts, dtype=np.uint8).astype(np.int64) - 48
    last = np.flatnonzero((chars & 0x20) == 0)  # each run's final chunk
    first = np.concatenate([[0], last[:-1] + 1]).astype(np.int64)
    chunks = last - first + 1
    position = np.arange(len(chars)) - np.repeat(first, chunks)
    runs = np.add.reduceat((chars & 0x1F) << (5 * position), first) if len(last) else np.zeros(0, dtype=np.int64)
    negative = (chars[last] & 0x10) != 0
    runs[negative] -= np.left_shift(1, 5 * chunks[negative])
    runs[1::2] = np.cumsum(runs[1::2])
    runs[2::2] = np.cumsum(runs[2::2])
    return runs


def _fill_runs(flat: np.ndarray, runs: np.ndarray) -> None:
    """Set to 1 the odd runs (zeros come first) of a zeroed column-major mask."""
    if int(runs.sum()) != len(flat):
        raise ValueError(f"its RLE runs cover {int(runs.sum())} pixels, not the image's {len(flat)}")
    ones = runs[1::2]
    total = int(ones.sum())
    if total > len(flat) // 8:  # a large object: one pass over the whole mask is cheaper than indexing
        flat[:] = np.repeat(np.arange(len(runs), dtype=np.uint8) & 1, runs)
        return
    starts = (np.cumsum(runs) - runs)[1::2]
    flat[np.arange(total) + np.repeat(starts - (np.cumsum(ones) - ones), ones)] = 1


def decode_masks(segmentations: list, height: int, width: int) -> np.ndarray:
    """Decode COCO segmentations into an (N, H, W) uint8 array; missing ones are all zero.

    Hand-written where pycocotools has mask.decode, because that is 4x slower here: it writes every pixel
    (most of a mask is background) and copies the result twice. Each mask is filled column-major, as RLE
    runs go, so the (N, H, W) result is a strided view of (N, W, H) memory.
    """
    transposed = np.zeros((len(segmentations), width, height), dtype=np.uint8)
    for i, segmentation in enumerate(segmentations):
        rle = segmentation_to_rle(segmentation, height, width)
        if rle is not None:
            _fill_runs(transposed[i].reshape(-1), rle_counts(rle["counts"]))
    return transposed.transpose(0, 2, 1)


# ----------------------------------------------------------------------------- targets


def clamp_boxes_xywh(boxes: np.ndarray, heights: np.ndarray | int, widths: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
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
        # does masks[valid] on every sample: 0.07 ms against 2 ms at 640x480); the 0/1 bytes are reinterpreted, not copied.
        target["masks"] = tv_tensors.Mask(torch.from_numpy(masks).view(torch.bool))
    if keypoints is not None:
        target["keypoints"] = torch.tensor(keypoints, dtype=torch.float32)
    return target


# ----------------------------------------------------------------------------- reading the annotation file


# gc=False: these records hold no references that could form a cycle, and tracking 1M of them makes decoding 2x slower.
class _ImageEntry(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: int
    height: int


class _AnnotationEntry(msgspec.Struct, gc=False):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    # Kept as its JSON text: decoding 860k polygons into Python floats is most of what a JSON parse costs.
    segmentation: msgspec.Raw = msgspec.Raw(b"[]")
    iscrowd: int | bool = 0
    keypoints: list[float] | None = None  # x1, y1, v1, x2, ... in person_keypoints files


class _CategoryEntry(msgspec.Struct, gc=False):
    id: int
    name: str = ""
    keypoints: list[str] = []  # keypoint names, in person_keypoints files
    skeleton: list[tuple[int, int]] = []  # pairs of keypoints to join when drawing, 1-based


class _AnnotationFile(msgspec.Struct, gc=False):
    images: list[_ImageEntry]
    annotations: list[_AnnotationEntry]
    categories: list[_CategoryEntry]


class _Entries(msgspec.Struct):
    """Only to name the entry behind a schema error: each entry left as raw JSON."""

    images: list[msgspec.Raw] = []
    annotations: list[msgspec.Raw] = []
    categories: list[msgspec.Raw] = []


SINGULAR = {"images": "image", "annotations": "annotation", "categories": "category"}
REQUIRED_FIELDS = {
    "images": "every image needs id, file_name, width and height",
    "annotations": "every annotation needs id, image_id, category_id and bbox",
    "categories": "every category needs an id",
}
_ERROR_PATH = re.compile(r"^(?P<what>.*) - at `\$\.(?P<list>images|annotations|categories)\[(?P<index>\d+)\](?P<field>[^`]*)`$")


def read_annotation_file(ann_file: Path) -> _AnnotationFile:
    """Decode the fields training needs, checking their types; any problem is one DataError line naming the file.

    msgspec decodes straight into typed records and leaves segmentations as raw text: 3 s for
    COCO's 448 MB train file, where json.load takes 20 s (benchmarks/bench_data_workers.py).
    """
    if ann_file.is_dir():
        raise DataError(f"{ann_file} is a folder; pass a COCO annotation file (instances_*.json)")
    try:
        raw = ann_file.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {ann_file} ({e.strerror}); check the path and its permissions") from None
    if re.match(rb"\s*\[", raw):
        raise DataError(
            f"{ann_file} holds a JSON list, as detection results files do, not a COCO dataset; "
            "pass an annotation file (an object with images, annotations and categories), e.g. annotations/instances_val2017.json"
        )
    try:
        return msgspec.json.decode(raw, type=_AnnotationFile)
    except msgspec.ValidationError as e:
        raise DataError(_describe_schema_error(ann_file, raw, str(e))) from None
    except msgspec.DecodeError as e:
        raise DataError(f"{ann_file} is not valid JSON ({e}); pass a COCO annotation file, or fetch it again if it was cut short") from None


def _describe_schema_error(ann_file: Path, raw: bytes, error: str) -> str:
    """msgspec's 'Expected `int`, got `str` - at `$.annotations[3].id`' as a sentence naming the entry by its id."""
    if error.startswith("Object missing required field") and " - at " not in error:
        key = error.split("`")[1]
        return f'{ann_file} has no "{key}" list; a COCO annotation file needs images, annotations and categories'
    match = _ERROR_PATH.match(error)
    if match is None:
        return f"{ann_file}: {error}; a COCO annotation file holds lists of images, annotations and categories"
    kind, index, field = match["list"], int(match["index"]), match["field"].lstrip(".")
    entry = f"{kind}[{index}]"
    entry_id = _entry_id(raw, kind, index)
    if entry_id is not None:
        entry = f"{SINGULAR[kind]} id {entry_id} ({entry})"
    what = match["what"]
    if what.startswith("Object missing required field") and not field:
        return f'{ann_file}: {entry} lacks "{what.split("`")[1]}"; {REQUIRED_FIELDS[kind]}'
    if field.startswith("bbox"):
        return f"{ann_file}: {entry} has a bad bbox ({what}); a COCO bbox is 4 numbers [x, y, width, height]"
    return f"{ann_file}: {entry}{' ' + field if field else ''}: {what}; fix that entry ({REQUIRED_FIELDS[kind]})"


def _entry_id(raw: bytes, kind: str, index: int) -> Any:
    try:
        entry = msgspec.json.decode(getattr(msgspec.json.decode(raw, type=_Entries), kind)[index])
    except (msgspec.DecodeError, IndexError):
        return None
    return entry.get("id") if isinstance(entry, dict) else None


def _positions(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `wanted` is in `ids` (unique), and which of `wanted` are there at all."""
    if not len(ids):
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(ids, kind="stable")
    slots = np.minimum(np.searchsorted(ids, wanted, sorter=order), len(ids) - 1)
    positions = order[slots]
    return positions, ids[positions] == wanted


def _check_unique(ann_file: Path, kind: str, ids: np.ndarray) -> None:
    ordered = np.sort(ids)
    repeats = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(repeats):
        raise DataError(f"{ann_file}: {kind} id {repeats[0]} appears more than once; {kind} ids must be unique")


def _check_references(ann_file: Path, ann_ids: np.ndarray, wanted: np.ndarray, found: np.ndarray, field: str, listed: str) -> None:
    if not found.all():
        first = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"{ann_file}: annotation id {ann_ids[first]} refers to {field} {wanted[first]}, which is not in its {listed} list "
            f"({int((~found).sum())} of the {len(found)} annotations refer to missing ones); fix or remove them"
        )


def label_to_category_ids(category_ids: Sequence[int], contiguous: bool) -> list[int]:
    """The category id of each label (label 0, the background, maps to 0): contiguous labels 1..K in
    category id order, or the category ids themselves (then num_classes is the largest id + 1)."""
    ids = sorted(int(i) for i in category_ids)
    return [0, *ids] if contiguous else list(range(max(ids, default=0) + 1))


def _keypoint_names(ann_file: Path, categories: list[_CategoryEntry]) -> list[str]:
    """The keypoint names of a keypoint dataset's categories (one list shared by all: torchvision's Keypoint R-CNN has one)."""
    lists = {tuple(c.keypoints) for c in categories if c.keypoints}
    if not lists:
        raise DataError(
            f'{ann_file}: no category lists "keypoints" names, so this is not a keypoint annotation file; --dataset coco_kp reads '
            "person_keypoints_*.json files, whose categories name their keypoints and whose annotations have keypoints"
        )
    if len(lists) > 1:
        raise DataError(f"{ann_file}: categories name different keypoints; Keypoint R-CNN predicts one set of keypoints for every class")
    return list(lists.pop())


def _keypoint_array(ann_file: Path, annotations: list[_AnnotationEntry], rows: np.ndarray, count: int) -> np.ndarray:
    """The keypoints of annotations `rows` as (len(rows), count, 3) float32: x, y, visibility."""
    keypoints = np.zeros((len(rows), count, 3), dtype=np.float32)
    for position, row in enumerate(rows.tolist()):
        values = annotations[row].keypoints
        if values is None or len(values) != 3 * count:
            found = "no keypoints" if values is None else f"{len(values)} keypoint numbers"
            raise DataError(
                f"{ann_file}: annotation id {annotations[row].id} has {found}; every annotation of a keypoint dataset needs "
                f"{3 * count} numbers (x, y, visibility for each of its category's {count} keypoints)"
            )
        keypoints[position] = np.asarray(values, dtype=np.float32).reshape(count, 3)
    return keypoints


def _visible_keypoints(annotations: list[_AnnotationEntry]) -> np.ndarray:
    """How many keypoints of each annotation are labelled (visibility > 0)."""
    return np.fromiter((sum(v > 0 for v in (a.keypoints or ())[2::3]) for a in annotations), dtype=np.int64, count=len(annotations))


@dataclass
class _Columns:
    """The annotation file's fields as arrays: one row per image, or per annotation."""

    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    file_names: list[str]
    ann_ids: np.ndarray
    image_of_ann: np.ndarray  # row of each annotation's image
    labels: np.ndarray
    boxes_xywh: np.ndarray
    crowd: np.ndarray


def _columns(ann_file: Path, data: _AnnotationFile) -> _Columns:
    """The fields training reads, as arrays, after checking that ids are unique and references resolve."""
    images, anns = data.images, data.annotations
    image_ids = np.fromiter((img.id for img in images), dtype=np.int64, count=len(images))
    ann_ids = np.fromiter((a.id for a in anns), dtype=np.int64, count=len(anns))
    category_ids = np.fromiter((c.id for c in data.categories), dtype=np.int64, count=len(data.categories))
    for kind, ids in (("image", image_ids), ("annotation", ann_ids), ("category", category_ids)):
        _check_unique(ann_file, kind, ids)
    if not len(category_ids):
        raise DataError(f"{ann_file} has an empty categories list; list the categories the annotations use")
    ann_image_ids = np.fromiter((a.image_id for a in anns), dtype=np.int64, count=len(anns))
    image_of_ann, found = _positions(image_ids, ann_image_ids)
    _check_references(ann_file, ann_ids, ann_image_ids, found, "image_id", "images")
    labels = np.fromiter((a.category_id for a in anns), dtype=np.int64, count=len(anns))
    _check_references(ann_file, ann_ids, labels, _positions(category_ids, labels)[1], "category_id", "categories")
    widths = np.fromiter((img.width for img in images), dtype=np.int64, count=len(images))
    heights = np.fromiter((img.height for img in images), dtype=np.int64, count=len(images))
    if len(images) and min(widths.min(), heights.min()) <= 0:
        bad = images[int(np.flatnonzero((widths <= 0) | (heights <= 0))[0])]
        raise DataError(f"{ann_file}: image id {bad.id} ({bad.file_name}) is {bad.width}x{bad.height}; width and height must be positive")
    return _Columns(
        image_ids=image_ids,
        widths=widths,
        heights=heights,
        file_names=[img.file_name for img in images],
        ann_ids=ann_ids,
        image_of_ann=image_of_ann,
        labels=labels,
        boxes_xywh=np.array([a.bbox for a in anns], dtype=np.float32).reshape(-1, 4),
        crowd=np.fromiter((bool(a.iscrowd) for a in anns), dtype=bool, count=len(anns)),
    )


def find_missing_files(folder: Path, file_names: Sequence[str]) -> np.ndarray:
    """Which files are not in `folder`: one directory listing per sub-folder and set look-ups, instead of a
    stat per image (118k stats take seconds on a network file system; see benchmarks/bench_data_workers.py)."""
    listings: dict[str, set[str]] = {}
    missing = np.zeros(len(file_names), dtype=bool)
    for i, name in enumerate(file_names):
        directory, _, base = name.rpartition("/")
        if directory not in listings:
            try:
                listings[directory] = set(os.listdir(folder / directory))
            except OSError:
                listings[directory] = set()
        missing[i] = base not in listings[directory]
    return missing


# ----------------------------------------------------------------------------- segmentation text

# Polygons as JSON writers print them use 16 symbols, so two fit in a byte: COCO-scale polygon text takes 150 MB, not 300 MB.
_PACK_SYMBOLS = np.frombuffer(b"0123456789.,[]- ", dtype=np.uint8)
_PACK_CODES = np.full(256, 255, dtype=np.uint8)
_PACK_CODES[_PACK_SYMBOLS] = np.arange(len(_PACK_SYMBOLS), dtype=np.uint8)
_PACK_TABLE = _PACK_CODES.tobytes()  # for bytes.translate, faster than a numpy look-up


class PackedTexts:
    """Many short JSON texts in one byte string, two characters a byte when every text uses only the 16 symbols
    of polygons (digits . , [ ] - and space); otherwise (RLE objects, exponents) as they are. Exact either way.
    `texts[a:b]` is the list of texts a to b-1; an odd-length text comes back with a trailing space."""

    def __init__(self, texts: Sequence):
        padded = [text if len(text) % 2 == 0 else bytes(text) + b" " for text in texts]  # a space is JSON whitespace
        self._data = b"".join(padded)
        self._offsets = np.concatenate([[0], np.cumsum([len(text) for text in padded], dtype=np.int64)])
        codes = np.frombuffer(self._data.translate(_PACK_TABLE), dtype=np.uint8)
        self.packed = not len(codes) or int(codes.max()) < len(_PACK_SYMBOLS)
        if self.packed:
            self._data = (codes[0::2] << 4 | codes[1::2]).tobytes()
            self._offsets //= 2

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def first_bytes(self) -> bytes:
        """Each text's first character."""
        first = np.frombuffer(self._data, dtype=np.uint8)[self._offsets[:-1]]
        return _PACK_SYMBOLS[first >> 4].tobytes() if self.packed else first.tobytes()

    def __getitem__(self, rows: slice) -> list[bytes]:
        start, stop, _ = rows.indices(len(self))
        first, last = int(self._offsets[start]), int(self._offsets[stop])
        text = self._data[first:last]
        scale = 1
        if self.packed:
            packed = np.frombuffer(text, dtype=np.uint8)
            text = _PACK_SYMBOLS[np.stack([packed >> 4, packed & 15], axis=1).ravel()].tobytes()
            scale = 2
        bounds = ((self._offsets[start : stop + 1] - first) * scale).tolist()
        return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


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


class _UnreadableImage(Exception):
    """Raised by CocoDetection._read_image with the reason a file cannot serve as its image."""


class CocoDetection(torch.utils.data.Dataset):
    """Images and detection targets from a COCO-format annotation file.

    With `remove_images_without_annotations` (training), images with no usable annotation are
    dropped, as the reference does; evaluation keeps every image. Image sizes come from the
    annotation file, so aspect-ratio grouping never opens an image. Missing image files are found
    at start-up; an unreadable one met later raises a DataError naming it, or with
    `skip_bad_images` is logged once and replaced by the next readable image, so batches keep
    their size and a seeded run stays deterministic.
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
    ):
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        self.with_keypoints = with_keypoints
        self.skip_bad_images = skip_bad_images
        self._coco: COCO | None = None
        self._reported_bad: set[int] = set()
        data = read_annotation_file(self.ann_file)
        self.categories = {c.id: c.name for c in data.categories}
        self.keypoint_names = _keypoint_names(self.ann_file, data.categories) if with_keypoints else []
        self.keypoint_skeleton = next(([list(pair) for pair in c.skeleton] for c in data.categories if c.keypoints), [])
        if label_to_category_id is None:  # else given: another split's, or a trained model's
            label_to_category_id = label_to_category_ids(self.categories, contiguous_labels)
        self.label_to_category_id = [int(i) for i in label_to_category_id]
        self._index(data, remove_images_without_annotations)
        del data
        _release_freed_memory()

    def _index(self, data: _AnnotationFile, remove_images_without_annotations: bool) -> None:
        """Check the file's ids and references, then keep compact arrays of what training reads."""
        columns = _columns(self.ann_file, data)
        boxes, non_empty = clamp_boxes_xywh(columns.boxes_xywh, columns.heights[columns.image_of_ann], columns.widths[columns.image_of_ann])
        keep_image = np.ones(len(columns.image_ids), dtype=bool)
        if remove_images_without_annotations:
            # The reference's rules for training images: at least one non-crowd box larger than one pixel,
            # and in keypoint datasets at least MIN_KEYPOINTS_PER_IMAGE labelled keypoints.
            usable = ~columns.crowd & (columns.boxes_xywh[:, 2] > 1) & (columns.boxes_xywh[:, 3] > 1)
            keep_image = np.bincount(columns.image_of_ann[usable], minlength=len(keep_image)) > 0
            if self.with_keypoints:
                visible = np.bincount(columns.image_of_ann, weights=_visible_keypoints(data.annotations), minlength=len(keep_image))
                keep_image &= visible >= MIN_KEYPOINTS_PER_IMAGE
        keep_image &= ~self._missing_images(columns.file_names, keep_image, columns.image_ids)
        self._check_not_empty(len(keep_image), int(keep_image.sum()))
        self._keep_images(columns, np.flatnonzero(keep_image))
        # Target annotations (not crowd, a box left after clamping), grouped by image in the kept images' order.
        new_position = np.cumsum(keep_image) - 1
        rows = np.flatnonzero(non_empty & ~columns.crowd & keep_image[columns.image_of_ann])
        rows = rows[np.argsort(new_position[columns.image_of_ann[rows]], kind="stable")]
        counts = np.bincount(new_position[columns.image_of_ann[rows]], minlength=len(self._image_ids))
        self._ann_offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._boxes, self._ann_ids = boxes[rows], columns.ann_ids[rows]
        self._labels = self._labels_of(columns.labels[rows])
        self._segmentations = PackedTexts([data.annotations[i].segmentation for i in rows.tolist()] if self.with_masks else [])
        self._check_segmentations()
        if self.with_keypoints:
            self._keypoints = _keypoint_array(self.ann_file, data.annotations, rows, len(self.keypoint_names))

    def _labels_of(self, category_ids: np.ndarray) -> np.ndarray:
        """The labels of annotations' category ids; an id with no label stops the run, naming it."""
        labelled = np.asarray(self.label_to_category_id[1:], dtype=np.int64)  # the category ids of labels 1, 2, ...
        positions, found = _positions(labelled, category_ids)
        if not found.all():
            first = int(category_ids[np.flatnonzero(~found)[0]])
            if first == 0:
                raise DataError(
                    f"{self.ann_file}: category id 0 ({self.categories.get(0, '?')}) would be label 0, which detection models "
                    "keep for the background; pass --label-mapping contiguous to number the categories from 1"
                )
            raise DataError(
                f"{self.ann_file}: category id {first} ({self.categories.get(first, '?')}) is not among the model's categories "
                f"(ids {sorted(labelled.tolist())}); train and evaluate on annotation files with the same categories"
            )
        return positions + 1

    def _keep_images(self, columns: _Columns, kept: np.ndarray) -> None:
        self._image_ids, self._widths, self._heights = columns.image_ids[kept], columns.widths[kept], columns.heights[kept]
        encoded = [columns.file_names[i].encode() for i in kept.tolist()]
        self._file_names = b"".join(encoded)
        self._file_name_offsets = np.concatenate([[0], np.cumsum([len(n) for n in encoded], dtype=np.int64)])

    def _check_segmentations(self) -> None:
        """Each segmentation must be a list (polygons) or an object (RLE); what is in them is checked when drawn."""
        first = np.frombuffer(self._segmentations.first_bytes(), dtype=np.uint8)
        wrong = np.flatnonzero((first != ord("[")) & (first != ord("{")))
        if len(wrong):
            text = self._segmentations[wrong[0] : wrong[0] + 1][0][:40].decode(errors="replace")
            raise DataError(
                f"{self.ann_file}: annotation id {self._ann_ids[wrong[0]]} has segmentation {text}; a segmentation is a list of "
                'polygons [[x1, y1, x2, y2, ...]] or an RLE {"size": [height, width], "counts": ...}'
            )

    def _missing_images(self, names: list[str], wanted: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
        """Which images have no file; an error unless skip_bad_images, which leaves them out with one warning."""
        indices = np.flatnonzero(wanted)
        missing = np.zeros(len(names), dtype=bool)
        missing[indices] = find_missing_files(self.img_folder, [names[i] for i in indices.tolist()])
        if not missing.any():
            return missing
        first = int(np.flatnonzero(missing)[0])
        count = int(missing.sum())
        if (self.img_folder.parent / names[first]).is_file():  # file_name values that repeat the folder, e.g. train2017/0001.jpg
            raise DataError(
                f"{self.ann_file}: file_name {names[first]} is relative to {self.img_folder.parent}, but file names must be "
                f"relative to {self.img_folder}; remove the folder from the file_name values"
            )
        if count == len(indices):
            raise DataError(
                f"{self.img_folder} holds none of the {count} images listed in {self.ann_file} (e.g. {names[first]}); "
                "check that --data-path is the COCO root and the images are unpacked there"
            )
        if not self.skip_bad_images:
            raise DataError(
                f"{self.img_folder / names[first]} is missing (image id {image_ids[first]}; {count} of the {len(indices)} images "
                f"listed in {self.ann_file} have no file); restore the files, remove them from the annotation file, "
                "or pass --skip-bad-images to leave them out"
            )
        _warn(f"leaving out {count} of the {len(indices)} images listed in {self.ann_file}: not in {self.img_folder} (e.g. {names[first]})")
        return missing

    def _check_not_empty(self, listed: int, kept: int) -> None:
        if kept:
            return
        if not listed:
            raise DataError(f"{self.ann_file} lists no images; pass an annotation file with images and annotations")
        raise DataError(
            f"{self.ann_file}: none of its {listed} images has a usable annotation (a non-crowd box wider and taller than "
            "1 pixel), so there is nothing to train on; check the annotations' bbox values ([x, y, width, height])"
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
    def num_classes(self) -> int:
        """The classifier's outputs: one per label, with 0 the background."""
        return len(self.label_to_category_id)

    def class_names(self) -> dict[str, Any]:
        """What a checkpoint keeps so that predictions can be named and mapped back to category ids (plain data)."""
        return {
            "label_to_category_id": list(self.label_to_category_id),
            "categories": [{"id": int(i), "name": name} for i, name in sorted(self.categories.items())],
            "keypoint_names": list(self.keypoint_names),
            "keypoint_skeleton": self.keypoint_skeleton if self.with_keypoints else [],
        }

    @property
    def aspect_ratios(self) -> list[float]:
        return (self._widths / self._heights).tolist()

    @property
    def coco(self) -> COCO:
        """The ground truth as a pycocotools index, built on first use (evaluation only)."""
        if self._coco is None:
            self._coco = coco_from_dict(load_coco_json(self.ann_file))
        return self._coco

    def image_path(self, index: int) -> Path:
        return self.img_folder / self.image_info(index)["file_name"]

    def _read_image(self, index: int) -> Image.Image:
        path = self.image_path(index)
        try:
            with Image.open(path) as image:
                image.load()
                # Grayscale and CMYK JPEGs become RGB; an RGB image is used as decoded (convert would copy it).
                image = image if image.mode == "RGB" else image.convert("RGB")
        except Image.UnidentifiedImageError:
            raise _UnreadableImage("not an image file PIL can read") from None
        except IMAGE_READ_ERRORS as e:
            raise _UnreadableImage(getattr(e, "strerror", None) or str(e)) from None
        expected = (int(self._widths[index]), int(self._heights[index]))
        if image.size != expected:
            raise _UnreadableImage(f"it is {image.width}x{image.height} but {self.ann_file.name} says {expected[0]}x{expected[1]}")
        return image

    def _bad_image_message(self, index: int, reason: str) -> str:
        return (
            f"{self.image_path(index)}: cannot use image {self._image_ids[index]} ({reason}); replace the file, remove the image "
            f"from {self.ann_file}, or pass --skip-bad-images to skip bad training images"
        )

    def load_image(self, index: int) -> Image.Image:
        """Item `index`'s image as RGB; a DataError naming the file if it cannot be read or has the wrong size."""
        try:
            return self._read_image(index)
        except _UnreadableImage as e:
            raise DataError(self._bad_image_message(index, str(e))) from None

    def _load_readable(self, index: int) -> tuple[Image.Image, int]:
        """Item `index`'s image, or with skip_bad_images the next readable one after it (deterministic, so
        batch sizes and seeded runs are kept); each bad file is reported once per process."""
        for step in range(len(self)):
            candidate = (index + step) % len(self)
            try:
                return self._read_image(candidate), candidate
            except _UnreadableImage as e:
                if not self.skip_bad_images:
                    raise DataError(self._bad_image_message(candidate, str(e))) from None
                if candidate not in self._reported_bad:
                    self._reported_bad.add(candidate)
                    _warn(f"skipping {self.image_path(candidate)} ({e}); the next readable image takes its place")
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
                    f"{self.ann_file}: annotation id {self._ann_ids[start + offset]} has a segmentation that cannot be drawn "
                    f"({type(e).__name__}: {e}); a segmentation is a list of polygons [[x1, y1, x2, y2, ...]] or an RLE "
                    '{"size": [height, width], "counts": ...}'
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


def _warn(message: str) -> None:
    # Straight to stderr: in distributed runs print() is silenced on all ranks but 0, and any rank can meet a bad file.
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


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
) -> CocoDetection:
    """The `image_set` ("train" or "val") split: of the COCO 2017 layout under `root` (`dataset` "coco"
    reads instances_*.json, "coco_kp" person_keypoints_*.json), or of a user's own annotation file and
    image folder when both `ann_file` and `img_folder` are given (--train-annotations/--train-images...)."""
    if img_folder is None or ann_file is None:
        img_folder, ann_file = _layout_paths(Path(root), image_set, ANNOTATION_PREFIXES[dataset])
    else:
        img_folder, ann_file = _own_paths(Path(img_folder), Path(ann_file), image_set)
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
    )


def _layout_paths(root: Path, image_set: str, prefix: str) -> tuple[Path, Path]:
    """The image folder and annotation file of a split of the COCO 2017 layout, checked."""
    hint = f"should hold train2017/, val2017/ and annotations/{prefix}_*2017.json ({SYNTHETIC_TARGETS[prefix]} writes a synthetic one)"
    if not root.is_dir():
        raise DataError(f"--data-path: {root} {'is a file' if root.exists() else 'does not exist'}; it {hint}")
    folder = SPLITS[image_set]
    ann_file = root / "annotations" / f"{prefix}_{folder}.json"
    for path in (ann_file, root / folder):
        if not path.exists():
            inside = f" ({root.name}/ is a folder inside a COCO root: pass {root.parent})" if root.name in COCO_FOLDERS else ""
            raise DataError(f"--data-path: {path} is missing; {root} {hint}{inside}")
    if not (root / folder).is_dir():
        raise DataError(f"--data-path: {root / folder} is a file, not a folder of images; {root} {hint}")
    return root / folder, ann_file


def _own_paths(img_folder: Path, ann_file: Path, image_set: str) -> tuple[Path, Path]:
    """A user's own image folder and annotation file, checked, with the flags that named them in any message."""
    if not ann_file.is_file():
        what = "is a folder" if ann_file.is_dir() else "does not exist"
        raise DataError(f"--{image_set}-annotations: {ann_file} {what}; pass a COCO-format annotation file (.json)")
    if not img_folder.is_dir():
        what = "is a file" if img_folder.exists() else "does not exist"
        raise DataError(
            f"--{image_set}-images: {img_folder} {what}; pass the folder that the annotation file's file_name values are relative to"
        )
    return img_folder, ann_file


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
    if not isinstance(base, CocoDetection):
        raise TypeError(f"evaluation needs a CocoDetection (or a Subset of one), got {type(base).__name__}")
    if indices is None and len(base) == len(base.coco.dataset["images"]):
        return base.coco
    ids = base.ids
    keep = set(ids) if indices is None else {ids[i] for i in indices}
    full = base.coco.dataset
    subset = {key: value for key, value in full.items() if key not in ("images", "annotations")}
    subset["images"] = [img for img in full["images"] if img["id"] in keep]
    subset["annotations"] = [ann for ann in full["annotations"] if ann["image_id"] in keep]
    return coco_from_dict(subset)

"""Reading an annotation file: where a split's files are, the file's schema and checks, and the format-neutral table
a dataset is built from.

A reader turns one file format into an `AnnotationTable` (numpy columns: one row per image, per
annotation, per category) and gives the evaluation ground truth as a COCO-format dict. `COCO_JSON`
reads COCO's JSON; a second format needs only a reader with the same two methods (`AnnotationReader`), named in
READERS: coco_utils.CocoDetection, its checks, storage and evaluation ground truth, train.py and predict.py then
serve it unchanged.

Every problem in the file (a field of the wrong type, a repeated id, a reference to nothing, a
non-positive image size) is one DataError line naming the file and the entry, raised while reading.
"""

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
from pycocotools import mask as mask_utils

import masks
from distributed import is_main_process
from errors import DataError, UsageError, warn

# ----------------------------------------------------------------------------- where a split's files are

SPLITS = {"train": "train2017", "val": "val2017"}
COCO_FOLDERS = {*SPLITS.values(), "annotations"}
# The make target that writes a synthetic dataset with annotation files of each prefix.
SYNTHETIC_TARGETS = {"instances": "make data", "person_keypoints": "make data-kp"}


def split_files(root: Path, image_set: str, prefix: str) -> tuple[Path, Path]:
    """The image folder and annotation file of a split of the COCO 2017 layout, checked."""
    hint = (
        f"should hold train2017/, val2017/ and annotations/{prefix}_*2017.json "
        f"({SYNTHETIC_TARGETS[prefix]} writes a synthetic one)"
    )
    if not root.is_dir():
        raise DataError(f"--data-path: {root} {'is a file' if root.exists() else 'does not exist'}; it {hint}")
    folder = SPLITS[image_set]
    ann_file = root / "annotations" / f"{prefix}_{folder}.json"
    inside = f" ({root.name}/ is a folder inside a COCO root: pass {root.parent})" if root.name in COCO_FOLDERS else ""
    for path in (ann_file, root / folder):
        if not path.exists():
            raise DataError(f"--data-path: {path} is missing; {root} {hint}{inside}")
    if not (root / folder).is_dir():
        raise DataError(f"--data-path: {root / folder} is a file, not a folder of images; {root} {hint}")
    return root / folder, ann_file


def own_split_files(img_folder: Path, ann_file: Path, image_set: str) -> tuple[Path, Path]:
    """A user's own image folder and annotation file, checked, with the flags that named them in any message."""
    if not ann_file.is_file():
        what = "is a folder" if ann_file.is_dir() else "does not exist"
        raise DataError(f"--{image_set}-annotations: {ann_file} {what}; pass a COCO-format annotation file (.json)")
    if not img_folder.is_dir():
        what = "is a file" if img_folder.exists() else "does not exist"
        raise DataError(
            f"--{image_set}-images: {img_folder} {what}; pass the folder that the annotation file's file_name values "
            "are relative to"
        )
    return img_folder, ann_file


# ----------------------------------------------------------------------------- the table a reader returns


@dataclass
class Category:
    id: int
    name: str = ""
    keypoints: list[str] = field(default_factory=list)  # keypoint names, in keypoint datasets
    skeleton: list[list[int]] = field(default_factory=list)  # pairs of keypoints to join when drawing, 1-based


@dataclass
class AnnotationTable:
    """An annotation file's content, checked: ids are unique, references resolve, image sizes are positive."""

    source: Path
    # one row per image
    image_ids: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    file_names: list[str]  # relative to the image folder
    # one row per annotation
    ann_ids: np.ndarray
    image_of_ann: np.ndarray  # the row of each annotation's image
    category_ids: np.ndarray
    boxes_xywh: np.ndarray  # float32 [x, y, width, height]
    crowd: np.ndarray
    segmentations: Sequence[bytes]  # each one's JSON text (polygons or RLE), exactly as written
    keypoints: Sequence[list[float] | None]  # x1, y1, v1, x2, ... or None
    # one row per category
    categories: list[Category]

    def keypoint_names(self) -> list[str]:
        """The keypoint names of a keypoint dataset's categories (one list for all: Keypoint R-CNN predicts one set)."""
        lists = {tuple(c.keypoints) for c in self.categories if c.keypoints}
        if not lists:
            raise DataError(
                f'{self.source}: no category lists "keypoints" names, so this is not a keypoint annotation file; '
                "--dataset coco_kp reads person_keypoints_*.json files, whose categories name their keypoints and "
                "whose annotations have keypoints"
            )
        if len(lists) > 1:
            raise DataError(
                f"{self.source}: categories name different keypoints; Keypoint R-CNN predicts one set of keypoints "
                "for every class"
            )
        return list(lists.pop())

    def keypoint_skeleton(self) -> list[list[int]]:
        return next(([list(pair) for pair in c.skeleton] for c in self.categories if c.keypoints), [])

    def visible_keypoints(self) -> np.ndarray:
        """How many keypoints of each annotation are labelled (visibility > 0)."""
        counts = (sum(v > 0 for v in (k or ())[2::3]) for k in self.keypoints)
        return np.fromiter(counts, dtype=np.int64, count=len(self.keypoints))

    def keypoint_array(self, rows: np.ndarray, count: int) -> np.ndarray:
        """The keypoints of annotations `rows` as (len(rows), count, 3) float32: x, y, visibility."""
        keypoints = np.zeros((len(rows), count, 3), dtype=np.float32)
        for position, row in enumerate(rows.tolist()):
            values = self.keypoints[row]
            if values is None or len(values) != 3 * count:
                found = "no keypoints" if values is None else f"{len(values)} keypoint numbers"
                raise DataError(
                    f"{self.source}: annotation id {self.ann_ids[row]} has {found}; every annotation of a keypoint "
                    f"dataset needs {3 * count} numbers (x, y, visibility for each of its category's {count} keypoints)"
                )
            keypoints[position] = np.asarray(values, dtype=np.float32).reshape(count, 3)
        return keypoints


class AnnotationReader(Protocol):
    """What a dataset needs of a file format."""

    def read(self, path: Path) -> AnnotationTable:
        """The file's content, checked; a DataError naming the file and entry for any problem."""

    def ground_truth(self, path: Path) -> dict:
        """The evaluation ground truth as a COCO-format dict (images, annotations, categories)."""


# ----------------------------------------------------------------------------- COCO's JSON


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
    keypoints: list[str] = []
    skeleton: list[tuple[int, int]] = []


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
_ERROR_PATH = re.compile(
    r"^(?P<what>.*) - at `\$\.(?P<list>images|annotations|categories)\[(?P<index>\d+)\](?P<field>[^`]*)`$"
)


class CocoJsonReader:
    """COCO's JSON annotation files (instances_*.json, person_keypoints_*.json, and any tool's COCO export)."""

    def read(self, path: Path) -> AnnotationTable:
        return _table(path, read_annotation_file(path))

    def ground_truth(self, path: Path) -> dict:
        # The standard library's parser, as pycocotools reads the file: the same floats, so the same numbers.
        with open(path) as f:
            data = json.load(f)
        filled = fill_exported_fields(data, path)
        if filled["area"] or filled["iscrowd"]:
            counts = ", ".join(f'{filled[name]} without "{name}"' for name in ("area", "iscrowd") if filled[name])
            print(
                f"Note: {path}: {counts} of {len(data['annotations'])} annotations, as exporting tools write them; "
                "filled as COCO defines them (area: the segmentation's, the box's for box-only ones; iscrowd: 0)"
            )
        if filled["id"]:
            print(
                f"Note: {path}: annotation ids start at {1 - filled['id']}, and COCO evaluation takes id 0 for "
                f"'unmatched'; evaluated with every annotation id + {filled['id']}"
            )
        return data


COCO_JSON = CocoJsonReader()

# The formats of --annotation-format (train.py, predict.py) by name: add a reader here before the flags are parsed.
READERS: dict[str, AnnotationReader] = {"coco": COCO_JSON}


def reader_named(name: str) -> AnnotationReader:
    if name not in READERS:
        raise UsageError(f"--annotation-format: unknown format {name!r}; choose one of {', '.join(READERS)}")
    return READERS[name]


def fill_exported_fields(data: dict, source: Path) -> dict[str, int]:
    """Write in what COCO defines but many exporters (labelme, CVAT, Roboflow) leave out, so that every evaluator
    reads the same ground truth: without "area", faster-coco-eval counts every object as small, and pycocotools
    stops at a missing "iscrowd". Annotation ids from 0 are shifted to start at 1: pycocotools and faster-coco-eval
    record a match by the ground truth's id, with 0 for none, so a detection matching annotation 0 would count as a
    false positive. Returns how many annotations lacked area and iscrowd, and the shift of the ids ("id")."""
    sizes = {image["id"]: (image["height"], image["width"]) for image in data.get("images", [])}
    annotations = data.get("annotations", [])
    filled = {"area": 0, "iscrowd": 0, "id": max(0, 1 - min((a["id"] for a in annotations), default=1))}
    for annotation in annotations:
        annotation["id"] += filled["id"]
        if "iscrowd" not in annotation:
            annotation["iscrowd"] = 0
            filled["iscrowd"] += 1
        if "area" not in annotation:
            annotation["area"] = _area(source, annotation, *sizes[annotation["image_id"]])
            filled["area"] += 1
    return filled


def _area(source: Path, annotation: dict, height: int, width: int) -> float:
    """COCO's area: the segmentation's pixel count, or the box's area where there is no segmentation to draw."""
    try:
        rle = masks.segmentation_to_rle(annotation.get("segmentation") or [], height, width)
    except masks.SEGMENTATION_ERRORS as e:
        raise DataError(
            f"{source}: annotation id {annotation.get('id')} has a segmentation that cannot be drawn ({e}); "
            "fix or remove it"
        ) from None
    if rle is None:
        _, _, box_width, box_height = annotation["bbox"]
        return float(box_width * box_height)
    return float(mask_utils.area(rle))


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
            f"{ann_file} holds a JSON list, as detection results files do, not a COCO dataset; pass an annotation "
            "file (an object with images, annotations and categories), e.g. annotations/instances_val2017.json"
        )
    try:
        return msgspec.json.decode(raw, type=_AnnotationFile)
    except msgspec.ValidationError as e:
        raise DataError(_describe_schema_error(ann_file, raw, str(e))) from None
    except msgspec.DecodeError as e:
        raise DataError(
            f"{ann_file} is not valid JSON ({e}); pass a COCO annotation file, or fetch it again if it was cut short"
        ) from None


def _describe_schema_error(ann_file: Path, raw: bytes, error: str) -> str:
    """msgspec's 'Expected `int`, got `str` - at `$.annotations[3].id`' as a sentence naming the entry by its id."""
    if error.startswith("Object missing required field") and " - at " not in error:
        key = error.split("`")[1]
        return f'{ann_file} has no "{key}" list; a COCO annotation file needs images, annotations and categories'
    match = _ERROR_PATH.match(error)
    if match is None:
        return f"{ann_file}: {error}; a COCO annotation file holds lists of images, annotations and categories"
    kind, index, field_name = match["list"], int(match["index"]), match["field"].lstrip(".")
    entry = f"{kind}[{index}]"
    entry_id = _entry_id(raw, kind, index)
    if entry_id is not None:
        entry = f"{SINGULAR[kind]} id {entry_id} ({entry})"
    what = match["what"]
    if what.startswith("Object missing required field") and not field_name:
        return f'{ann_file}: {entry} lacks "{what.split("`")[1]}"; {REQUIRED_FIELDS[kind]}'
    if field_name.startswith("bbox"):
        return f"{ann_file}: {entry} has a bad bbox ({what}); a COCO bbox is 4 numbers [x, y, width, height]"
    return (
        f"{ann_file}: {entry}{' ' + field_name if field_name else ''}: {what}; fix that entry ({REQUIRED_FIELDS[kind]})"
    )


def _entry_id(raw: bytes, kind: str, index: int) -> Any:
    try:
        entry = msgspec.json.decode(getattr(msgspec.json.decode(raw, type=_Entries), kind)[index])
    except (msgspec.DecodeError, IndexError):
        return None
    return entry.get("id") if isinstance(entry, dict) else None


def _table(ann_file: Path, data: _AnnotationFile) -> AnnotationTable:
    """The decoded file as columns, after checking that ids are unique and references resolve."""
    images, anns = data.images, data.annotations
    image_ids = np.fromiter((img.id for img in images), dtype=np.int64, count=len(images))
    ann_ids = np.fromiter((a.id for a in anns), dtype=np.int64, count=len(anns))
    category_ids = np.fromiter((c.id for c in data.categories), dtype=np.int64, count=len(data.categories))
    for kind, ids in (("image", image_ids), ("annotation", ann_ids), ("category", category_ids)):
        _check_unique(ann_file, kind, ids)
    if not len(category_ids):
        raise DataError(f"{ann_file} has an empty categories list; list the categories the annotations use")
    ann_image_ids = np.fromiter((a.image_id for a in anns), dtype=np.int64, count=len(anns))
    image_of_ann, found = find_positions(image_ids, ann_image_ids)
    _check_references(ann_file, ann_ids, ann_image_ids, found, "image_id", "images")
    ann_category_ids = np.fromiter((a.category_id for a in anns), dtype=np.int64, count=len(anns))
    _check_references(
        ann_file,
        ann_ids,
        ann_category_ids,
        find_positions(category_ids, ann_category_ids)[1],
        "category_id",
        "categories",
    )
    widths = np.fromiter((img.width for img in images), dtype=np.int64, count=len(images))
    heights = np.fromiter((img.height for img in images), dtype=np.int64, count=len(images))
    if len(images) and min(widths.min(), heights.min()) <= 0:
        bad = images[int(np.flatnonzero((widths <= 0) | (heights <= 0))[0])]
        raise DataError(
            f"{ann_file}: image id {bad.id} ({bad.file_name}) is {bad.width}x{bad.height}; "
            "width and height must be positive"
        )
    return AnnotationTable(
        source=ann_file,
        image_ids=image_ids,
        widths=widths,
        heights=heights,
        file_names=[img.file_name for img in images],
        ann_ids=ann_ids,
        image_of_ann=image_of_ann,
        category_ids=ann_category_ids,
        boxes_xywh=np.array([a.bbox for a in anns], dtype=np.float32).reshape(-1, 4),
        crowd=np.fromiter((bool(a.iscrowd) for a in anns), dtype=bool, count=len(anns)),
        segmentations=[a.segmentation for a in anns],
        keypoints=[a.keypoints for a in anns],
        categories=[Category(c.id, c.name, list(c.keypoints), [list(p) for p in c.skeleton]) for c in data.categories],
    )


# ----------------------------------------------------------------------------- what the annotations use


def labelled_categories(table: AnnotationTable, leave_out_unused: bool, used_elsewhere: Collection[int]) -> list[int]:
    """The category ids to label. A category that no annotation uses, here or in `used_elsewhere` (the category ids
    of the evaluation file's annotations), is named in a warning (Roboflow lists its supercategory as category 0),
    and left out with `leave_out_unused` (--label-mapping auto on your own files)."""
    listed = [c.id for c in table.categories]
    used = set(np.unique(table.category_ids).tolist()) | {int(i) for i in used_elsewhere}
    unused = [c for c in table.categories if c.id not in used]
    if not unused or not used:
        return listed
    if leave_out_unused:
        what = "left out of the labels (--label-mapping auto; --label-mapping contiguous keeps every category)"
    else:
        what = "the model keeps an output for each, which training never sees"
    if is_main_process():
        named = ", ".join(f"{c.id} ({c.name or 'no name'})" for c in unused)
        warn(f"{table.source}: no annotation uses category {named}, as exporters list supercategories; {what}")
    return sorted(used) if leave_out_unused else listed


def check_polygons(source: Path, texts: Sequence[bytes], ann_ids: np.ndarray, require_masks: bool) -> None:
    """Polygon parts of fewer than 3 points are dropped (pycocotools and detectron2 drop them), said once. With
    `require_masks` (training a mask model), an annotation with no mask left (segmentation [], as box-only exports
    write it, or only such parts) is refused, counted: torchvision's mask loss takes every target, so the mask head
    would learn an empty mask for it."""
    kept, dropped = masks.polygon_parts(texts)
    if dropped.any():
        print(
            f"Note: {source}: dropped {int(dropped.sum())} polygon parts of fewer than 3 points "
            f"(in {int((dropped > 0).sum())} annotations), as pycocotools and detectron2 do"
        )
    box_only = np.flatnonzero(kept == 0)
    if len(box_only) and require_masks:
        raise DataError(
            f"{source}: {len(box_only)} of the {len(texts)} annotations a mask model trains on have no mask "
            f"(e.g. annotation id {ann_ids[box_only[0]]}: segmentation [] as box-only exports write it, or only "
            "polygons of fewer than 3 points), so the mask head would learn empty masks; train a box-only model "
            "(--model fasterrcnn_resnet50_fpn) or give those annotations polygons"
        )


# ----------------------------------------------------------------------------- segmentation text, kept compact

# Polygons as JSON writers print them use 16 symbols, so two fit in a byte: COCO's polygon text takes 150 MB, not 300.
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


# ----------------------------------------------------------------------------- checks


def find_positions(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _check_references(
    ann_file: Path, ann_ids: np.ndarray, wanted: np.ndarray, found: np.ndarray, field_name: str, listed: str
) -> None:
    if not found.all():
        first = int(np.flatnonzero(~found)[0])
        raise DataError(
            f"{ann_file}: annotation id {ann_ids[first]} refers to {field_name} {wanted[first]}, which is not in its "
            f"{listed} list ({int((~found).sum())} of the {len(found)} annotations refer to missing ones); "
            "fix or remove them"
        )

"""Where a detector fails: COCO's analysis of the precision-recall curve into error types, and the AP each costs.

COCO's analysis (cocodataset.org/#detection-eval, "Analysis"; analyze() of its MATLAB API, after Hoiem et al.)
draws seven PR curves per category, each counting fewer errors than the one before (STAGES):
  C75  PR at IoU 0.75: the standard AP75's curve;      C50  at IoU 0.5: AP50's;
  Loc  at IoU 0.1: localisation errors ignored (duplicate detections still count as false positives);
  Sim  Loc, and detections on an object of another class of the same supercategory ignored;
  Oth  Loc, and detections on an object of any other class ignored;
  BG   Oth with every remaining false positive removed: precision 1 up to the recall reached;
  FN   every object found: precision 1 at every recall.
A detection on an object of another class is "ignored" as COCO does it: the other objects become crowd regions of
the detection's class, which a detection may match without counting (pycocotools' ignore flag is its iscrowd).
AP here is the mean of a curve over recall and categories, area "all", 100 detections per image (COCO's
summarize()), so C75 and C50 equal the standard AP75 and AP50.

What each kind of error costs (TIDE's question, answered from these curves): the AP gained by the step from one
curve to the next (ERROR_COSTS): fixing every localisation error (C50 -> Loc), similar-class confusion (Loc -> Sim),
other-class confusion (Sim -> Oth), background detection (Oth -> BG) and missed object (BG -> FN).

The confusion matrix (`confusion_matrix`): objects by category against detections by category, plus background,
at a stated IoU and score threshold.

Uses pycocotools' COCO and COCOeval (the definition's own code), whatever backend the evaluation ran on.
"""

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAGES = ["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"]
ERROR_COSTS = {"localisation": ("C50", "Loc"), "similar class": ("Loc", "Sim"), "other class": ("Sim", "Oth"),
               "background": ("Oth", "BG"), "missed": ("BG", "FN")}  # fmt: skip
IOU_THRESHOLDS = [0.75, 0.5, 0.1]  # C75, C50, Loc
MAX_DETECTIONS = 100


@dataclass
class Analysis:
    """The curves of one iou type: curves[stage] is (101 recall thresholds, K categories), -1 for a category without
    ground truth (which every mean leaves out), in category_ids' order."""

    iou_type: str
    category_ids: list[int]
    curves: dict[str, np.ndarray]

    def ap(self, stage: str, category_id: int | None = None) -> float:
        """The mean of `stage`'s curve over recall (and over categories with ground truth, or for one); -1 if none."""
        curve = self.curves[stage]
        if category_id is not None:
            curve = curve[:, [self.category_ids.index(category_id)]]
        kept = curve[:, curve[0] > -1]
        return float(kept.mean()) if kept.size else -1.0

    def costs(self, category_id: int | None = None) -> dict[str, float]:
        """The AP each kind of error costs: the AP gained by fixing every error of that kind (ERROR_COSTS)."""
        return {kind: self.ap(after, category_id) - self.ap(before, category_id)
                for kind, (before, after) in ERROR_COSTS.items()}  # fmt: skip


def _quiet_index(data: dict) -> COCO:
    """A COCO index of `data` whose annotations are copies: pycocotools' segm evaluation replaces their polygons by
    RLEs (bytes, which JSON cannot hold) in place."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it indexes, loads and evaluates
        coco = COCO()
        coco.dataset = {**data, "annotations": [dict(a) for a in data["annotations"]]}
        coco.createIndex()
    return coco


def _precision(gt: COCO, detections: list[dict], iou_type: str, iou_thresholds: list[float], category_ids: list[int],
               image_ids: list[int] | None = None) -> np.ndarray:  # fmt: skip
    """pycocotools' precision array at area "all", MAX_DETECTIONS: (thresholds, 101 recalls, categories), over
    `image_ids` (default all: an image with neither objects nor detections of the categories changes nothing)."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(detections)) if detections else _quiet_index({**gt.dataset, "annotations": []})
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.iouThrs = np.array(iou_thresholds)
        evaluator.params.catIds = category_ids
        if image_ids is not None:
            evaluator.params.imgIds = image_ids
        evaluator.params.maxDets = [MAX_DETECTIONS]
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][:, :, :, 0, 0]


def _confusions_ignored(gt_data: dict, detections: list[dict], iou_type: str, category_id: int,
                        confused_with: set[int]) -> np.ndarray:  # fmt: skip
    """Category `category_id`'s PR curve at IoU 0.1 where its detections on objects of `confused_with` do not count:
    those objects become crowd regions of the category."""
    annotations = []
    for annotation in gt_data["annotations"]:
        if annotation["category_id"] == category_id:
            annotations.append(annotation)
        elif annotation["category_id"] in confused_with:
            annotations.append({**annotation, "category_id": category_id, "iscrowd": 1})
    gt = _quiet_index({**gt_data, "annotations": annotations})
    own = [d for d in detections if d["category_id"] == category_id]
    # Only the images where the category has objects or detections count: COCO has thousands without either.
    image_ids = sorted({a["image_id"] for a in annotations} | {d["image_id"] for d in own})
    return _precision(gt, own, iou_type, [0.1], [category_id], image_ids)[0, :, 0]


def analyze(gt_data: dict, detections: list[dict], iou_type: str) -> Analysis:
    """COCO's analysis of `detections` (COCO results entries) against the ground truth `gt_data` (a COCO annotation
    file's dict), for `iou_type` "bbox" or "segm"."""
    categories = sorted(gt_data["categories"], key=lambda c: c["id"])
    category_ids = [c["id"] for c in categories]
    gt = _quiet_index(gt_data)
    standard = _precision(gt, detections, iou_type, IOU_THRESHOLDS, category_ids)
    curves = dict(zip(STAGES[:3], standard))
    curves["Sim"], curves["Oth"] = curves["Loc"].copy(), curves["Loc"].copy()
    for k, category in enumerate(categories):
        if curves["Loc"][0, k] == -1:
            continue  # no ground truth: nothing to confuse it with
        supercategory = category.get("supercategory")
        similar = {c["id"] for c in categories if c["id"] != category["id"] and supercategory is not None
                   and c.get("supercategory") == supercategory}  # fmt: skip
        others = set(category_ids) - {category["id"]}
        for stage, confused_with in (("Sim", similar), ("Oth", others)):
            if confused_with:
                ignored = _confusions_ignored(gt_data, detections, iou_type, category["id"], confused_with)
                curves[stage][:, k] = np.maximum(curves["Loc"][:, k], ignored)
    curves["Oth"] = np.maximum(curves["Oth"], curves["Sim"])  # ignoring more confusions never loses precision
    has_gt = curves["Loc"][0] > -1
    curves["BG"] = np.where(has_gt, (curves["Oth"] > 0).astype(float), -1.0)
    curves["FN"] = np.where(has_gt, np.ones_like(curves["Oth"]), -1.0)
    return Analysis(iou_type, category_ids, curves)


# ----------------------------------------------------------------------------- the confusion matrix


@dataclass
class ConfusionMatrix:
    """counts[i, j]: objects of category_ids[i] detected as category_ids[j]; the last row and column are background:
    counts[-1, j] detections of j on no object (false positives), counts[i, -1] objects of i no detection found.
    image_errors[image_id]: that image's missed objects, background detections and class confusions."""

    category_ids: list[int]
    counts: np.ndarray
    iou_threshold: float
    score_threshold: float
    image_errors: dict[int, dict[str, int]]


def _image_ious(detections: list[dict], objects: list[dict], iou_type: str) -> np.ndarray:
    """IoU of each detection (rows) with each object; intersection over the detection's area for a crowd region."""
    if not detections or not objects:
        return np.zeros((len(detections), len(objects)))
    key = "bbox" if iou_type == "bbox" else "segmentation"
    crowd = [int(o.get("iscrowd", 0)) for o in objects]
    return np.asarray(mask_utils.iou([d[key] for d in detections], [o[key] for o in objects], crowd))


def _image_cells(found: list[dict], objects: list[dict], iou_type: str, iou_threshold: float) -> list[tuple]:
    """One image's (object category id or None, detection category id or None) pairs, None being background: each
    detection of `found` (best score first) takes the unmatched object of its own category it overlaps most at IoU
    >= `iou_threshold`, else the unmatched object of any category it overlaps most; one on a crowd region (its area
    covered that much) counts nowhere, as in COCO's evaluation; the objects left are missed."""
    ious = _image_ious(found, objects, iou_type)
    taken = [bool(o.get("iscrowd", 0)) for o in objects]  # a crowd region is never an object to find
    cells = []
    for d, detection in enumerate(found):
        candidates = [(o["category_id"] != detection["category_id"], -ious[d, j], j) for j, o in enumerate(objects)
                      if not taken[j] and ious[d, j] >= iou_threshold]  # fmt: skip
        if candidates:
            j = min(candidates)[2]
            taken[j] = True
            cells.append((objects[j]["category_id"], detection["category_id"]))
        elif not any(o.get("iscrowd", 0) and ious[d, j] >= iou_threshold for j, o in enumerate(objects)):
            cells.append((None, detection["category_id"]))
    return cells + [(o["category_id"], None) for j, o in enumerate(objects) if not taken[j]]


def _errors(cells: list[tuple]) -> dict[str, int]:
    return {"missed": sum(d is None for _, d in cells), "background": sum(o is None for o, _ in cells),
            "confused": sum(o is not None and d is not None and o != d for o, d in cells)}  # fmt: skip


def confusion_matrix(gt_data: dict, detections: list[dict], iou_type: str = "bbox", iou_threshold: float = 0.5,
                     score_threshold: float = 0.5) -> ConfusionMatrix:  # fmt: skip
    """Objects against the detections scoring at least `score_threshold`, image by image (see _image_cells)."""
    category_ids = sorted(c["id"] for c in gt_data["categories"])
    index = {category_id: i for i, category_id in enumerate(category_ids)} | {None: len(category_ids)}
    counts = np.zeros((len(index), len(index)), dtype=np.int64)
    coco = _quiet_index(gt_data)
    by_image: dict[int, list[dict]] = {}
    for detection in detections:
        if detection["score"] >= score_threshold:
            by_image.setdefault(detection["image_id"], []).append(detection)
    image_errors = {}
    for image_id in coco.getImgIds():
        objects = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if iou_type == "segm":
            objects = [{**o, "segmentation": coco.annToRLE(o)} for o in objects]
        found = sorted(by_image.get(image_id, []), key=lambda d: -d["score"])
        cells = _image_cells(found, objects, iou_type, iou_threshold)
        for object_category, detection_category in cells:
            counts[index[object_category], index[detection_category]] += 1
        image_errors[image_id] = _errors(cells)
    return ConfusionMatrix(category_ids, counts, iou_threshold, score_threshold, image_errors)


# ----------------------------------------------------------------------------- what a run records (metrics.jsonl)

IOU_TYPES = ("bbox", "segm")  # the IoU types analysed; keypoints have no such breakdown
SCORE_THRESHOLD = 0.5  # the confusion matrix's and the gallery's: what predict.py draws by default
IOU_THRESHOLD = 0.5
WORST_IMAGES = 8


def _mean_curve(curve: np.ndarray) -> list[float]:
    """A stage's PR curve over all categories with ground truth: precision at each of the 101 recalls."""
    kept = curve[:, curve[0] > -1]
    return kept.mean(axis=1).tolist() if kept.size else []


def _for_iou_type(detections: list[dict], iou_type: str) -> list[dict]:
    """The detections with only the geometry `iou_type` scores: pycocotools' loadRes takes a box first if any."""
    unused = "segmentation" if iou_type == "bbox" else "bbox"
    return [{k: v for k, v in d.items() if k != unused} for d in detections]


def summary(result: Analysis, names: dict[int, str], matrix: ConfusionMatrix) -> dict:
    """One IoU type's analysis as JSON-ready numbers: AP per stage, the AP each error costs, the mean PR curves, the
    same per category with ground truth (by name, with its number of objects, crowd regions aside), and the confusion
    matrix's counts."""
    per_category = {}
    objects = dict(zip(matrix.category_ids, matrix.counts[:-1].sum(axis=1).tolist()))  # each found or missed once
    for k, category_id in enumerate(result.category_ids):
        if result.curves["Loc"][0, k] > -1:
            per_category[names[category_id]] = {
                "objects": objects[category_id],
                "ap": {stage: result.ap(stage, category_id) for stage in STAGES},
                "costs": result.costs(category_id),
            }
    return {
        "ap": {stage: result.ap(stage) for stage in STAGES},
        "costs": result.costs(),
        "curves": {stage: _mean_curve(result.curves[stage]) for stage in STAGES},
        "per_category": per_category,
        "confusion": matrix.counts.tolist(),
    }


def _worst_images(gt_data: dict, detections: list[dict], matrix: ConfusionMatrix, image_folder: str | None,
                  count: int) -> list[dict]:  # fmt: skip
    """The `count` images with the most errors (missed objects, background detections, class confusions), each
    with its objects and the detections the matrix counted, so that a report can draw them without the files."""
    ranked = sorted(matrix.image_errors.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    chosen = [image_id for image_id, errors in ranked[:count] if sum(errors.values())]
    images = {image["id"]: image for image in gt_data["images"] if image["id"] in chosen}
    worst = []
    for image_id in chosen:
        image = images[image_id]
        path = str(Path(image_folder, image["file_name"]).resolve()) if image_folder else None
        worst.append({
            "image_id": image_id, "file_name": image["file_name"], "path": path, **matrix.image_errors[image_id],
            "objects": [a for a in gt_data["annotations"] if a["image_id"] == image_id],
            "detections": [d for d in detections if d["image_id"] == image_id and d["score"] >= matrix.score_threshold],
        })  # fmt: skip
    return worst


def analyze_evaluation(gt_data: dict, detections: list[dict], iou_types: list[str], image_folder: str | None = None,
                       worst: int = WORST_IMAGES) -> dict | None:  # fmt: skip
    """What an evaluation's analysis record holds (engine.analysis_record adds where in the run it falls): for each
    analysed IoU type its summary(), the categories, the thresholds, and the worst images by the first IoU type's
    matrix (their files under `image_folder`). None when no IoU type can be analysed (a keypoint model)."""
    analysed = [t for t in IOU_TYPES if t in iou_types]
    if not analysed:
        return None
    names = {c["id"]: c.get("name") or str(c["id"]) for c in gt_data["categories"]}
    detections = [d for d in detections if d["category_id"] in names]  # others are no category: COCOeval ignores them
    body: dict = {"iou_threshold": IOU_THRESHOLD, "score_threshold": SCORE_THRESHOLD, "images": len(gt_data["images"]),
                  "categories": [{"id": i, "name": names[i]} for i in sorted(names)]}  # fmt: skip
    matrices = {}
    for iou_type in analysed:
        entries = _for_iou_type(detections, iou_type)
        matrices[iou_type] = confusion_matrix(gt_data, entries, iou_type, IOU_THRESHOLD, SCORE_THRESHOLD)
        body[iou_type] = summary(analyze(gt_data, entries, iou_type), names, matrices[iou_type])
    body["worst_images"] = _worst_images(gt_data, detections, matrices[analysed[0]], image_folder, worst)
    return body

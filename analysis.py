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
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it indexes, loads and evaluates
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _precision(gt: COCO, detections: list[dict], iou_type: str, iou_thresholds: list[float],
               category_ids: list[int]) -> np.ndarray:  # fmt: skip
    """pycocotools' precision array at area "all", MAX_DETECTIONS: (thresholds, 101 recalls, categories)."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(detections)) if detections else _quiet_index({**gt.dataset, "annotations": []})
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.params.iouThrs = np.array(iou_thresholds)
        evaluator.params.catIds = category_ids
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
    return _precision(gt, own, iou_type, [0.1], [category_id])[0, :, 0]


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
    counts[-1, j] detections of j on no object (false positives), counts[i, -1] objects of i no detection found."""

    category_ids: list[int]
    counts: np.ndarray
    iou_threshold: float
    score_threshold: float


def _image_ious(detections: list[dict], objects: list[dict], iou_type: str) -> np.ndarray:
    """IoU of each detection (rows) with each object; intersection over the detection's area for a crowd region."""
    if not detections or not objects:
        return np.zeros((len(detections), len(objects)))
    key = "bbox" if iou_type == "bbox" else "segmentation"
    crowd = [int(o.get("iscrowd", 0)) for o in objects]
    return np.asarray(mask_utils.iou([d[key] for d in detections], [o[key] for o in objects], crowd))


def confusion_matrix(gt_data: dict, detections: list[dict], iou_type: str = "bbox", iou_threshold: float = 0.5,
                     score_threshold: float = 0.5) -> ConfusionMatrix:  # fmt: skip
    """Objects against detections scoring at least `score_threshold`, image by image: each detection, best score
    first, takes the unmatched object of its own category it overlaps most at IoU >= `iou_threshold`, else the
    unmatched object of any category it overlaps most; one on a crowd region (its area covered that much) counts
    nowhere, as in COCO's evaluation; the rest are background."""
    category_ids = sorted(c["id"] for c in gt_data["categories"])
    index = {category_id: i for i, category_id in enumerate(category_ids)}
    background = len(category_ids)
    counts = np.zeros((background + 1, background + 1), dtype=np.int64)
    coco = _quiet_index(gt_data)
    by_image: dict[int, list[dict]] = {}
    for detection in detections:
        if detection["score"] >= score_threshold:
            by_image.setdefault(detection["image_id"], []).append(detection)
    for image_id in coco.getImgIds():
        objects = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        if iou_type == "segm":
            objects = [{**o, "segmentation": coco.annToRLE(o)} for o in objects]
        found = sorted(by_image.get(image_id, []), key=lambda d: -d["score"])
        ious = _image_ious(found, objects, iou_type)
        taken = [bool(o.get("iscrowd", 0)) for o in objects]  # a crowd region is never an object to find
        for d, detection in enumerate(found):
            column = index[detection["category_id"]]
            candidates = [(o["category_id"] != detection["category_id"], -ious[d, j], j) for j, o in enumerate(objects)
                          if not taken[j] and ious[d, j] >= iou_threshold]  # fmt: skip
            if candidates:
                j = min(candidates)[2]
                taken[j] = True
                counts[index[objects[j]["category_id"]], column] += 1
            elif not any(o.get("iscrowd", 0) and ious[d, j] >= iou_threshold for j, o in enumerate(objects)):
                counts[background, column] += 1
        for j, o in enumerate(objects):
            if not taken[j]:
                counts[index[o["category_id"]], background] += 1
    return ConfusionMatrix(category_ids, counts, iou_threshold, score_threshold)

"""analysis.py: COCO's PR breakdown (C75 ... FN) and the AP each kind of error costs, on hand-built cases where each
error is known, and C75 / C50 against pycocotools' standard AP75 / AP50."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import analysis

CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog", "supercategory": "animal"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]  # fmt: skip
BOX = [10.0, 10.0, 40.0, 40.0]  # xywh
SHIFTED = [25.0, 10.0, 40.0, 40.0]  # IoU 0.45 with BOX: a localisation error (between 0.1 and 0.5)
ELSEWHERE = [60.0, 60.0, 30.0, 30.0]  # overlaps nothing


def _ground_truth(objects: list[tuple[int, int, list[float]]]) -> dict:
    """(image id, category id, box) each; images 1-3 of 100 x 100."""
    annotations = [{"id": i, "image_id": image, "category_id": category, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for i, (image, category, box) in enumerate(objects, start=1)]  # fmt: skip
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _detections(entries: list[tuple[int, int, list[float], float]]) -> list[dict]:
    return [{"image_id": image, "category_id": category, "bbox": box, "score": score}
            for image, category, box, score in entries]  # fmt: skip


CASES = {  # error kind: (objects, detections, the AP fixing it adds)
    # the only cat, found at IoU 0.45: C50 AP 0, Loc AP 1
    "localisation": ([(1, 1, BOX)], [(1, 1, SHIFTED, 0.9)], 1.0),
    # a cat detection on a dog, scored above the right ones: cat's AP 0.5 until Sim, dog's 1; mean +0.25
    "similar class": ([(1, 1, BOX), (2, 2, BOX)], [(2, 1, BOX, 0.95), (1, 1, BOX, 0.9), (2, 2, BOX, 0.9)], 0.25),
    # the same on a car (another supercategory): lands in Oth, not Sim
    "other class": ([(1, 1, BOX), (2, 3, BOX)], [(2, 1, BOX, 0.95), (1, 1, BOX, 0.9), (2, 3, BOX, 0.9)], 0.25),
    # a cat detection where there is nothing, scored first: cat's AP 0.5 until BG
    "background": ([(1, 1, BOX)], [(2, 1, ELSEWHERE, 0.95), (1, 1, BOX, 0.9)], 0.5),
    # two cats, one found: precision 1 up to recall 0.5 (51 of 101 thresholds), then FN adds the rest
    "missed": ([(1, 1, BOX), (2, 1, BOX)], [(1, 1, BOX, 0.9)], 50 / 101),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_known_error_lands_in_its_own_bucket(kind):
    objects, detections, gain = CASES[kind]
    result = analysis.analyze(_ground_truth(objects), _detections(detections), "bbox")
    costs = result.costs()
    assert costs[kind] == pytest.approx(gain, abs=1e-12)
    assert all(cost == pytest.approx(0, abs=1e-12) for other, cost in costs.items() if other != kind), costs
    assert result.ap("FN") == 1.0


def test_one_of_each_error_in_one_set_is_counted_once_each_for_its_category():
    objects = [(1, 1, BOX), (2, 1, BOX), (2, 2, ELSEWHERE), (3, 3, ELSEWHERE), (3, 1, BOX)]
    detections = [
        (1, 1, SHIFTED, 0.99),  # localisation error on image 1's cat
        (2, 1, ELSEWHERE, 0.98),  # a cat on image 2's dog: similar class
        (3, 1, ELSEWHERE, 0.97),  # a cat on image 3's car: other class
        (3, 1, [0.0, 60.0, 20.0, 20.0], 0.96),  # a cat on nothing: background
        (2, 1, BOX, 0.5),  # image 2's cat found; image 3's cat missed
    ]
    result = analysis.analyze(_ground_truth(objects), _detections(detections), "bbox")
    costs = result.costs(category_id=1)
    assert all(cost > 0.01 for cost in costs.values()), costs
    assert result.ap("C50", category_id=2) == 0.0 and result.ap("FN", category_id=2) == 1.0  # the dog: missed
    assert result.costs(category_id=2)["missed"] == 1.0


def _standard_stats(gt: dict, detections: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(detections), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_c75_and_c50_are_the_standard_ap75_and_ap50(synthetic_root, iou_type):
    """On the synthetic validation set, with detections made from its objects: moved, relabelled, missing, extra."""
    gt = json.loads((synthetic_root / "annotations" / "instances_val2017.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    rng = np.random.default_rng(0)
    category_ids = [c["id"] for c in gt["categories"]]
    detections = []
    for annotation in gt["annotations"]:
        for _ in range(int(rng.integers(0, 3))):  # missed, found once, or duplicated
            x, y, w, h = annotation["bbox"]
            dx, dy = rng.normal(0, 0.15 * w), rng.normal(0, 0.15 * h)
            category = annotation["category_id"] if rng.random() < 0.8 else int(rng.choice(category_ids))
            entry = {"image_id": annotation["image_id"], "category_id": category, "score": float(rng.random()),
                     "bbox": [x + dx, y + dy, w, h]}  # fmt: skip
            if iou_type == "segm":
                rle = coco.annToRLE(annotation)
                counts = rle["counts"]
                entry["segmentation"] = {
                    "size": rle["size"],
                    "counts": counts if isinstance(counts, str) else counts.decode(),
                }
            detections.append(entry)
    assert len(detections) > 15
    stats = _standard_stats(gt, detections, iou_type)
    result = analysis.analyze(gt, detections, iou_type)
    assert 0.05 < result.ap("C75") <= result.ap("C50") < 0.95  # segm: the objects' own masks, so C75 = C50
    assert abs(result.ap("C50") - stats[1]) <= 1e-9 and abs(result.ap("C75") - stats[2]) <= 1e-9
    stages = [result.ap(stage) for stage in analysis.STAGES]
    assert stages == sorted(stages) and stages[-1] == 1.0  # each curve counts fewer errors than the one before


def test_the_confusion_matrix_counts_each_object_and_detection_once_in_its_cell():
    crowd = {"id": 99, "image_id": 3, "category_id": 3, "bbox": [0.0, 0.0, 50.0, 50.0], "area": 2500.0, "iscrowd": 1}
    gt = _ground_truth([(1, 1, BOX), (1, 2, ELSEWHERE), (2, 1, BOX), (2, 3, ELSEWHERE)])
    gt["annotations"].append(crowd)
    detections = _detections([
        (1, 1, BOX, 0.9),  # image 1's cat, found
        (1, 1, ELSEWHERE, 0.8),  # image 1's dog, taken for a cat
        (1, 1, BOX, 0.7),  # a duplicate on the cat, already found: background
        (2, 2, [0.0, 60.0, 20.0, 20.0], 0.9),  # a dog on nothing: background
        (2, 3, ELSEWHERE, 0.3),  # image 2's car, found below the score threshold: the car is missed
        (3, 1, [5.0, 5.0, 20.0, 20.0], 0.9),  # inside the crowd region: counts nowhere
    ])  # fmt: skip
    # image 2's cat: no detection; rows: objects (cat, dog, car, background), columns: detections
    result = analysis.confusion_matrix(gt, detections, "bbox", iou_threshold=0.5, score_threshold=0.5)
    assert result.category_ids == [1, 2, 3]
    expected = np.array([[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(result.counts, expected)
    lower = analysis.confusion_matrix(gt, detections, "bbox", iou_threshold=0.5, score_threshold=0.2)
    assert lower.counts[2, 2] == 1 and lower.counts[2, 3] == 0  # the car found at 0.3


def test_the_segm_confusion_matrix_matches_masks(synthetic_root):
    """Each object's own mask as a detection of its category: the diagonal holds every non-crowd object."""
    gt = json.loads((synthetic_root / "annotations" / "instances_val2017.json").read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    detections = []
    for annotation in gt["annotations"]:
        rle = coco.annToRLE(annotation)
        counts = rle["counts"] if isinstance(rle["counts"], str) else rle["counts"].decode()
        detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                           "score": 0.9, "segmentation": {"size": rle["size"], "counts": counts}})  # fmt: skip
    result = analysis.confusion_matrix(gt, detections, "segm")
    per_category = [sum(1 for a in gt["annotations"] if a["category_id"] == c and not a.get("iscrowd"))
                    for c in result.category_ids]  # fmt: skip
    assert list(np.diag(result.counts)[:-1]) == per_category and result.counts.sum() == sum(per_category)


def test_the_worst_images_come_most_errors_first_with_what_to_draw_them(tmp_path):
    gt = _ground_truth([(1, 1, BOX), (2, 1, BOX), (2, 3, ELSEWHERE), (3, 2, BOX)])
    found = _detections([(1, 1, BOX, 0.9), (3, 2, BOX, 0.9), (3, 3, ELSEWHERE, 0.8), (3, 1, ELSEWHERE, 0.3)])
    body = analysis.analyze_evaluation(gt, found, ["bbox"], str(tmp_path))
    worst = body["worst_images"]
    assert [(w["image_id"], w["missed"], w["background"], w["confused"]) for w in worst] == [(2, 2, 0, 0), (3, 0, 1, 0)]
    assert (
        worst[0]["path"] == str(tmp_path / "2.jpg") and len(worst[0]["objects"]) == 2 and worst[0]["detections"] == []
    )
    assert [d["score"] for d in worst[1]["detections"]] == [0.9, 0.8]  # the one under the score threshold left out
    assert body["bbox"]["confusion"][-1] == [0, 0, 1, 0] and body["bbox"]["per_category"]["cat"]["objects"] == 2
    assert "segm" not in body and body["images"] == 3

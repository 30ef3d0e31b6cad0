"""CocoEvaluator (both backends) against pycocotools run by hand on the same detections; masks pasted and
encoded box by box against torchvision's paste_masks_in_image and pycocotools' encoder."""

import contextlib
import copy
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import Subset
from torchvision.models.detection.roi_heads import paste_masks_in_image

import coco_eval
import coco_utils
import errors
from coco_eval import CocoEvaluator
from conftest import model_like_masks, pycocotools_rles
from transforms import keypoint_flip_indices


@pytest.fixture(params=coco_eval.BACKENDS)
def backend(request) -> str:
    """Each test that takes this runs with both evaluation backends."""
    return request.param


def ann_file(root: Path, split: str = "val") -> Path:
    return root / "annotations" / f"instances_{split}2017.json"


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def quarter(rng: np.random.Generator, low: float, high: float) -> float:
    """A multiple of 0.25: exact in float32, so xyxy -> xywh is exact in any precision."""
    return float(rng.integers(int(low * 4), int(high * 4) + 1)) / 4


class Detections:
    """Predictions for some images, both as model outputs and as a COCO results list written independently."""

    def __init__(self, dataset: coco_utils.CocoDetection, indices: list[int], seed: int = 0, false_positives: int = 2):
        rng = np.random.default_rng(seed)
        category_ids = sorted(dataset.categories)
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}
        self.bbox: list[dict] = []
        self.segm: list[dict] = []
        drafts = []
        for index in indices:
            _, target = dataset[index]
            height, width = target["masks"].shape[-2:]
            boxes, labels, masks = [], [], []
            for box, label, mask in zip(target["boxes"].tolist(), target["labels"].tolist(), target["masks"].numpy()):
                x0, y0, x1, y1 = (round(v * 4) / 4 + quarter(rng, -1.5, 1.5) for v in box)
                boxes.append([min(x0, x1 - 1), min(y0, y1 - 1), max(x1, x0 + 1), max(y1, y0 + 1)])
                labels.append(label if rng.random() < 0.85 else int(rng.choice(category_ids)))
                masks.append(np.roll(mask, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1)))
            for _ in range(false_positives):
                x0, y0 = quarter(rng, 0, width - 12), quarter(rng, 0, height - 12)
                x1, y1 = x0 + quarter(rng, 4, 11), y0 + quarter(rng, 4, 11)
                boxes.append([x0, y0, x1, y1])
                labels.append(int(rng.choice(category_ids)))
                fp_mask = np.zeros((height, width), dtype=np.uint8)
                fp_mask[int(y0) : int(y1), int(x0) : int(x1)] = 1
                masks.append(fp_mask)
            drafts.append((dataset.ids[index], boxes, labels, masks, height, width))
        total = sum(len(d[1]) for d in drafts)
        score_pool = rng.permutation(np.arange(1, total + 1)) / (total + 1)  # distinct scores, no ties to break
        used = 0
        for image_id, boxes, labels, masks, height, width in drafts:
            n = len(boxes)
            scores = torch.tensor(score_pool[used : used + n], dtype=torch.float32)
            used += n
            binary = np.stack(masks).astype(bool) if n else np.zeros((0, height, width), dtype=bool)
            # probabilities on either side of the 0.5 threshold, never on it
            probs = np.where(
                binary,
                rng.choice([0.55, 0.7, 0.95], size=binary.shape),
                rng.choice([0.0, 0.2, 0.45], size=binary.shape),
            )
            self.outputs[image_id] = {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": scores,
                "labels": torch.tensor(labels, dtype=torch.int64),
                "masks": torch.from_numpy(probs.astype(np.float32))[:, None],
            }
            for box, label, score, mask in zip(boxes, labels, scores.tolist(), binary):
                x0, y0, x1, y1 = box
                self.bbox.append(
                    {"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
                )
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}
                self.segm.append(
                    {"image_id": image_id, "category_id": label, "segmentation": segmentation, "score": score}
                )

    def chunks(self, size: int) -> list[dict]:
        items = list(self.outputs.items())
        return [dict(items[i : i + size]) for i in range(0, len(items), size)]


def pycocotools_stats(gt: COCO, results: list[dict], iou_type: str, tmp_path: Path, **params) -> np.ndarray:
    """pycocotools by hand: a JSON results file, COCO.loadRes, COCOeval evaluate/accumulate/summarize."""
    results_file = tmp_path / f"{iou_type}_results.json"
    results_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(str(results_file))
        evaluation = COCOeval(gt, dt, iouType=iou_type)
        for name, value in params.items():
            setattr(evaluation.params, name, value)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def run_evaluator(evaluator: CocoEvaluator, updates: list[dict]) -> CocoEvaluator:
    for update in updates:
        evaluator.update(update)
    evaluator.synchronize_between_processes()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def assert_stats_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    assert len(actual) == len(expected)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_pycocotools(any_root, tmp_path, seed, backend):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=seed)
    evaluator = run_evaluator(
        CocoEvaluator(coco_utils.get_coco_api_from_dataset(ds), ["bbox", "segm"], backend=backend), detections.chunks(3)
    )
    gt = load_coco(ann_file(any_root))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        expected = pycocotools_stats(gt, results, iou_type, tmp_path)
        actual = evaluator.coco_eval[iou_type].stats
        assert_stats_equal(actual, expected)
        assert len(actual) == 12
        assert 0 < actual[0] < 1  # a real score, neither empty nor perfect
    assert evaluator.img_ids == sorted(ds.ids)


def test_per_category_numbers_are_pycocotools_one_category_at_a_time(any_root, tmp_path, backend):
    """From the accumulated precision array, with no second evaluation: what params.catIds = [c] gives, to 1e-9."""
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=2)
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), detections.chunks(2))
    gt = load_coco(ann_file(any_root))
    checked = 0
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        table = evaluator.metrics["per_category"][iou_type]
        assert list(table) == [gt.cats[c]["name"] for c in gt.getCatIds()]
        for category_id in gt.getCatIds():
            expected = pycocotools_stats(gt, results, iou_type, tmp_path, catIds=[category_id])[:3]
            numbers = table[gt.cats[category_id]["name"]]
            np.testing.assert_allclose([numbers["AP"], numbers["AP50"], numbers["AP75"]], expected, rtol=0, atol=1e-9)
            checked += expected[0] > 0
    assert checked >= 4  # real scores, not only -1s and zeros


def test_both_backends_print_pycocotools_table(quirky_root, capsys):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=9)
    printed = {}
    for backend in coco_eval.BACKENDS:
        evaluator = CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend)
        for update in detections.chunks(2):
            evaluator.update(update)
        evaluator.accumulate()
        capsys.readouterr()
        evaluator.summarize()
        printed[backend] = capsys.readouterr().out.splitlines()
    assert printed["faster_coco_eval"] == printed["pycocotools"]
    # per IoU type a title and 12 numbers, then per IoU type the per-category table: a title, a header, 3 categories
    assert len(printed["pycocotools"]) == 2 * 13 + 2 * 5
    assert printed["pycocotools"][1].startswith(
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = "
    )
    assert printed["pycocotools"][26:28] == ["Per category (bbox):", "  category      AP    AP50    AP75"]
    assert [line.split()[0] for line in printed["pycocotools"][28:31]] == ["person", "car", "bottle"]


def test_perfect_detections_score_one(synthetic_root, backend):
    ds = coco_utils.get_coco(synthetic_root, "val", transforms=None)
    outputs = {}
    for index in range(len(ds)):
        _, target = ds[index]
        n = len(target["labels"])
        outputs[target["image_id"]] = {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "scores": torch.linspace(0.9, 0.5, n),
            "labels": target["labels"],
            "masks": target["masks"][:, None].float(),
        }
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), [outputs])
    for iou_type in ("bbox", "segm"):
        assert evaluator.coco_eval[iou_type].stats[0] == pytest.approx(1.0)


def test_subset_ground_truth_matches_pycocotools_on_those_images(quirky_root, tmp_path, backend):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    subset = Subset(ds, [2, 0])
    detections = Detections(ds, [2, 0], seed=3)
    evaluator = run_evaluator(
        CocoEvaluator(coco_utils.get_coco_api_from_dataset(subset), ["bbox", "segm"], backend=backend),
        detections.chunks(1),
    )
    gt = load_coco(ann_file(quirky_root))
    image_ids = sorted([ds.ids[2], ds.ids[0]])
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        expected = pycocotools_stats(gt, results, iou_type, tmp_path, imgIds=image_ids)
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, expected)


def test_only_updated_images_are_scored(any_root, tmp_path, backend):
    """As with the reference: images never passed to update() (another rank's, say) are not counted as misses."""
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    detections = Detections(ds, [0, 1], seed=6)
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), detections.chunks(1))
    assert evaluator.img_ids == sorted(ds.ids[:2])
    gt = load_coco(ann_file(any_root))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        expected = pycocotools_stats(gt, results, iou_type, tmp_path, imgIds=sorted(ds.ids[:2]))
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, expected)
        # all images would score lower
        assert not np.allclose(expected, pycocotools_stats(gt, results, iou_type, tmp_path))


def test_plain_pycocotools_ground_truth(any_root, tmp_path, backend):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=5)
    from_dataset = run_evaluator(
        CocoEvaluator(coco_utils.get_coco_api_from_dataset(ds), ["bbox", "segm"], backend=backend), detections.chunks(4)
    )
    plain_gt = load_coco(ann_file(any_root))
    from_file = run_evaluator(CocoEvaluator(plain_gt, ["bbox", "segm"], backend=backend), detections.chunks(4))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        assert_stats_equal(from_file.coco_eval[iou_type].stats, from_dataset.coco_eval[iou_type].stats)
        assert_stats_equal(
            from_file.coco_eval[iou_type].stats, pycocotools_stats(plain_gt, results, iou_type, tmp_path)
        )


def empty_output(height: int, width: int) -> dict:
    return {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, height, width),
    }


def test_no_detections_at_all(any_root, backend):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    updates = [{img["id"]: empty_output(img["height"], img["width"])} for img in ds.images]
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), updates)
    for iou_type in ("bbox", "segm"):
        stats = evaluator.coco_eval[iou_type].stats
        assert len(stats) == 12
        assert set(stats.tolist()) <= {0.0, -1.0}
        assert 0.0 in stats.tolist()  # there is ground truth, so AP is 0 rather than undefined
        assert stats[0] == 0.0


def test_no_update_at_all(quirky_root, backend):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), [])
    for iou_type in ("bbox", "segm"):
        stats = evaluator.coco_eval[iou_type].stats
        assert len(stats) == 12
        assert set(stats.tolist()) <= {0.0, -1.0}


def test_image_updated_twice_counts_once(any_root, tmp_path, backend):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=7)
    chunks = detections.chunks(3)
    first_id = next(iter(detections.outputs))
    padded = chunks + [{first_id: detections.outputs[first_id]}]  # the padded sampler's repeat, in a later batch
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), padded)
    assert evaluator.img_ids == sorted(ds.ids)
    gt = load_coco(ann_file(any_root))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, pycocotools_stats(gt, results, iou_type, tmp_path))


def test_two_ranks_with_a_padded_image_count_it_once(quirky_root, tmp_path, monkeypatch, backend):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=11)
    ids = list(detections.outputs)
    # a DistributedSampler over 4 images and 3 ranks pads to 6: the first image is seen twice
    shards = [[ids[0], ids[3]], [ids[1], ids[0]], [ids[2]]]
    evaluators = []
    for shard in shards:
        evaluator = CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend)
        for image_id in shard:
            evaluator.update({image_id: detections.outputs[image_id]})
        evaluators.append(evaluator)
    monkeypatch.setattr(
        coco_eval.distributed, "all_gather", lambda data: [copy.deepcopy(e.image_results) for e in evaluators]
    )
    merged = run_evaluator(evaluators[0], [])
    assert merged.img_ids == sorted(ids)
    gt = load_coco(ann_file(quirky_root))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        assert_stats_equal(merged.coco_eval[iou_type].stats, pycocotools_stats(gt, results, iou_type, tmp_path))


def test_params_edited_before_accumulate_are_respected(any_root, tmp_path, backend):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=2)
    category = sorted(ds.categories)[-1]
    evaluator = CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend)
    for iou_type in ("bbox", "segm"):
        evaluator.coco_eval[iou_type].params.catIds = [category]
    run_evaluator(evaluator, detections.chunks(2))
    gt = load_coco(ann_file(any_root))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        restricted = pycocotools_stats(gt, results, iou_type, tmp_path, catIds=[category])
        everything = pycocotools_stats(gt, results, iou_type, tmp_path)
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, restricted)
        assert not np.allclose(restricted, everything)  # the edit makes a difference
        assert evaluator.coco_eval[iou_type].eval["precision"].shape[2] == 1  # one category


def test_accumulate_can_run_again_after_editing_params(quirky_root, tmp_path, backend):
    """Re-scoring with other params (or after more updates) must not depend on an earlier accumulate()."""
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=4)
    evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), detections.chunks(2))
    gt = load_coco(ann_file(quirky_root))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, pycocotools_stats(gt, results, iou_type, tmp_path))
        evaluator.coco_eval[iou_type].params.catIds = [44]
    run_evaluator(evaluator, [])
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        expected = pycocotools_stats(gt, results, iou_type, tmp_path, catIds=[44])
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, expected)


# ----------------------------------------------------------------------------- keypoints and errors

KEYPOINT_NAMES = [f"kp{i}" for i in range(17)]


def keypoint_ground_truth() -> COCO:
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in (10, 30):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 64, "height": 64})
        for person in range(2):
            x0, y0 = 4 + 30 * person, 6
            xs = rng.uniform(x0, x0 + 24, 17)
            ys = rng.uniform(y0, y0 + 50, 17)
            keypoints = [v for x, y in zip(xs, ys) for v in (round(float(x), 2), round(float(y), 2), 2)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": keypoints,
                    "num_keypoints": 17,
                    "bbox": [x0, y0, 24.0, 50.0],
                    "area": 24.0 * 50.0,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES, "skeleton": []}]
    return coco_eval.coco_index({"images": images, "annotations": annotations, "categories": categories})


def test_keypoints(tmp_path, backend):
    gt = keypoint_ground_truth()
    rng = np.random.default_rng(1)
    outputs, results = {}, []
    for image_id in (10, 30):
        anns = gt.imgToAnns[image_id]
        keypoints = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float64).reshape(-1, 17, 3)
        keypoints[..., :2] += torch.from_numpy(rng.normal(0, 1.0, size=(len(anns), 17, 2)))
        keypoints[..., 2] = 1
        scores = torch.tensor([0.9, 0.6] if image_id == 10 else [0.8, 0.7])
        outputs[image_id] = {
            "keypoints": keypoints,
            "scores": scores,
            "labels": torch.ones(len(anns), dtype=torch.int64),
        }
        for kps, score in zip(keypoints.tolist(), scores.tolist()):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": [v for point in kps for v in point],
                    "score": score,
                }
            )
    evaluator = run_evaluator(CocoEvaluator(gt, ["keypoints"], backend=backend), [{10: outputs[10]}, {30: outputs[30]}])
    stats = evaluator.coco_eval["keypoints"].stats
    assert len(stats) == 10
    assert 0.3 < stats[0] <= 1.0
    assert_stats_equal(stats, pycocotools_stats(gt, results, "keypoints", tmp_path))


def test_unknown_iou_type_raises(quirky_root):
    gt = load_coco(ann_file(quirky_root))
    with pytest.raises(ValueError, match="masks"):
        CocoEvaluator(gt, ["bbox", "masks"])
    with pytest.raises(ValueError, match="proposal"):
        coco_eval.compact_result({"scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}, ["proposal"])


def test_segm_without_masks_says_what_it_needs():
    prediction = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}
    with pytest.raises(ValueError, match="raw_masks"):
        coco_eval.compact_result(prediction, ["segm"])


def test_results_convert_boxes_to_xywh_and_keep_float32_scores():
    prediction = {
        "boxes": torch.tensor([[1.0, 2.0, 4.5, 8.0]]),
        "scores": torch.tensor([0.1]),
        "labels": torch.tensor([44]),
    }
    result = coco_eval.compact_result(prediction, ["bbox"])
    # the reference's numbers: the float32 score and box, as Python floats
    assert coco_eval.coco_results(9, result, "bbox") == [
        {"image_id": 9, "category_id": 44, "score": torch.tensor(0.1).item(), "bbox": [1.0, 2.0, 3.5, 6.0]}
    ]


def test_detections_for_images_outside_the_ground_truth_are_refused(quirky_root, backend):
    evaluator = CocoEvaluator(load_coco(ann_file(quirky_root)), ["bbox"], backend=backend)
    evaluator.update(
        {123456789: {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64)}}
    )
    with pytest.raises(ValueError, match="123456789"):
        evaluator.accumulate()


def test_accumulate_leaves_the_garbage_collector_as_it_was(quirky_root):
    import gc

    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=1)
    assert gc.isenabled()
    run_evaluator(CocoEvaluator(ds.coco, ["segm"]), detections.chunks(2))
    assert gc.isenabled()
    gc.disable()
    try:
        run_evaluator(CocoEvaluator(ds.coco, ["segm"]), detections.chunks(2))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_missing_faster_coco_eval_is_a_usage_error(monkeypatch, quirky_root):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails, as when not installed
    with pytest.raises(errors.UsageError, match="pip install faster-coco-eval, or pass --eval-backend pycocotools"):
        CocoEvaluator(load_coco(ann_file(quirky_root)), ["bbox"], backend="faster_coco_eval")
    CocoEvaluator(load_coco(ann_file(quirky_root)), ["bbox"], backend="pycocotools")  # still works


def test_train_stops_at_once_when_the_backend_is_missing(monkeypatch, capsys, tmp_path):
    import train

    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    assert train.cli(["--data-path", str(tmp_path), "--device", "cpu", "--eval-backend", "faster_coco_eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --eval-backend faster_coco_eval:")


# ----------------------------------------------------------------------------- masks to RLE


def raw_mask_outputs(dataset: coco_utils.CocoDetection, seed: int) -> dict[int, dict]:
    """Unpasted Mask R-CNN-like outputs: for each ground-truth instance a jittered box and its mask
    resized to 28x28 with soft edges, plus false positives from model_like_masks."""
    rng = np.random.default_rng(seed)
    outputs = {}
    for index in range(len(dataset)):
        info = dataset.images[index]
        height, width = info["height"], info["width"]
        _, target = dataset[index]
        gt_boxes = target["boxes"].as_subclass(torch.Tensor)
        masks, boxes = model_like_masks(len(gt_boxes) + 5, height, width, seed=seed * 1000 + index)
        for i, (box, gt_mask) in enumerate(zip(gt_boxes.tolist(), target["masks"])):
            x0, y0, x1, y1 = (
                int(box[0]),
                int(box[1]),
                max(int(box[2]), int(box[0]) + 1),
                max(int(box[3]), int(box[1]) + 1),
            )
            crop = gt_mask[y0:y1, x0:x1].float()[None, None]
            soft = torch.nn.functional.avg_pool2d(
                torch.nn.functional.interpolate(crop, size=(28, 28), mode="bilinear"), 3, 1, 1
            )
            masks[i] = 0.02 + 0.96 * soft[0] + torch.from_numpy(rng.uniform(-0.01, 0.01, (1, 28, 28))).float()
        jittered = (gt_boxes + torch.from_numpy(rng.normal(0, 1.0, size=gt_boxes.shape)).float()).clamp(min=0)
        jittered = jittered.minimum(torch.tensor([width, height, width, height], dtype=torch.float32))
        boxes[: len(gt_boxes)] = torch.cat(
            [jittered[:, :2].minimum(jittered[:, 2:]), jittered[:, :2].maximum(jittered[:, 2:])], dim=1
        )
        labels = torch.cat([target["labels"], torch.from_numpy(rng.choice(sorted(dataset.categories), 5))])
        scores = torch.from_numpy(rng.uniform(0.05, 1, len(labels))).float()
        outputs[info["id"]] = {
            "boxes": boxes,
            "scores": scores,
            "labels": labels,
            "raw_masks": masks,
            "image_size": (height, width),
        }
    return outputs


def test_raw_masks_score_as_the_models_own_pasting(any_root, backend, tmp_path):
    """The whole mask path: raw 28x28 masks pasted here give the same 12 numbers as the model's pasted
    masks through pycocotools by hand."""
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    raw = raw_mask_outputs(ds, seed=3)
    pasted = {}
    results = []
    for image_id, output in raw.items():
        full = paste_masks_in_image(output["raw_masks"], output["boxes"], output["image_size"])
        pasted[image_id] = {k: v for k, v in output.items() if k not in ("raw_masks", "image_size")} | {"masks": full}
        for rle, label, score in zip(
            pycocotools_rles((full[:, 0] > 0.5).numpy()), output["labels"].tolist(), output["scores"].tolist()
        ):
            segmentation = {"size": list(output["image_size"]), "counts": rle.decode("ascii")}
            results.append({"image_id": image_id, "category_id": label, "segmentation": segmentation, "score": score})
    from_raw = run_evaluator(CocoEvaluator(ds.coco, ["segm"], backend=backend), [raw])
    from_pasted = run_evaluator(CocoEvaluator(ds.coco, ["segm"], backend=backend), [pasted])
    expected = pycocotools_stats(load_coco(ann_file(any_root)), results, "segm", tmp_path)
    assert 0 < expected[0] < 1
    assert_stats_equal(from_raw.coco_eval["segm"].stats, expected)
    assert_stats_equal(from_pasted.coco_eval["segm"].stats, expected)


def test_backends_agree_on_tied_scores(any_root):
    """Ties across images and within an image: both backends break them the same way."""
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    outputs = raw_mask_outputs(ds, seed=8)
    rng = np.random.default_rng(8)
    for output in outputs.values():
        output["scores"] = torch.from_numpy(rng.choice([0.3, 0.6, 0.9], len(output["scores"]))).float()
    stats = {}
    for backend in coco_eval.BACKENDS:
        evaluator = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), [outputs])
        stats[backend] = {t: e.stats for t, e in evaluator.coco_eval.items()}
    for iou_type in ("bbox", "segm"):
        assert_stats_equal(stats["faster_coco_eval"][iou_type], stats["pycocotools"][iou_type])


# ----------------------------------------------------------------------------- the model's masks left unpasted


def _evaluate_shard(rank: int, world_size: int, init_file: str, root: str, out_dir: str) -> None:
    """One rank of a real gloo process group: its InferenceSampler shard, then the merge."""
    import torch.distributed as dist

    import samplers

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        ds = coco_utils.get_coco(root, "val", transforms=None)
        detections = Detections(ds, list(range(len(ds))), seed=5)
        evaluator = CocoEvaluator(ds.coco, ["bbox", "segm"])
        for index in samplers.InferenceSampler(len(ds)):
            image_id = ds.ids[index]
            evaluator.update({image_id: detections.outputs[image_id]})
        run_evaluator(evaluator, [])
        stats = {t: e.stats.tolist() for t, e in evaluator.coco_eval.items()}
        torch.save({"stats": stats, "img_ids": evaluator.img_ids}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_evaluation_over_gloo_equals_one_process(synthetic_root, tmp_path, world_size):
    torch.multiprocessing.spawn(
        _evaluate_shard,
        args=(world_size, str(tmp_path / "init"), str(synthetic_root), str(tmp_path)),
        nprocs=world_size,
    )
    ds = coco_utils.get_coco(synthetic_root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=5)
    single = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"]), detections.chunks(3))
    for rank in range(world_size):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["img_ids"] == sorted(ds.ids)
        for iou_type in ("bbox", "segm"):
            assert 0 < result["stats"][iou_type][0] < 1
            assert_stats_equal(np.array(result["stats"][iou_type]), single.coco_eval[iou_type].stats)


# ----------------------------------------------------------------------------- labels that are not category ids


def perfect_outputs(
    dataset: coco_utils.CocoDetection, iou_types: tuple[str, ...] = ("bbox", "segm")
) -> dict[int, dict]:
    """The targets as detections, in the dataset's labels."""
    outputs = {}
    for index in range(len(dataset)):
        _, target = dataset[index]
        n = len(target["labels"])
        output = {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "scores": torch.linspace(0.9, 0.5, n),
            "labels": target["labels"],
        }
        if "segm" in iou_types:
            output["masks"] = target["masks"][:, None].float()
        if "keypoints" in iou_types:
            output["keypoints"] = target["keypoints"]
        outputs[target["image_id"]] = output
    return outputs


def relabelled(outputs: dict[int, dict], label_of: dict[int, int]) -> dict[int, dict]:
    return {
        i: {**o, "labels": torch.tensor([label_of[int(v)] for v in o["labels"]], dtype=torch.int64)}
        for i, o in outputs.items()
    }


SYNTHETIC_CONTIGUOUS = [0, 2, 5, 11, 17]  # the synthetic dataset's category id of each contiguous label


def contiguous_detections(
    root: Path, seed: int, backend: str
) -> tuple[Any, Detections, dict[int, dict], CocoEvaluator]:
    """Random detections of the synthetic val split, their outputs in contiguous labels, and an evaluator
    with the mapping back to category ids that has scored them."""
    ds = coco_utils.get_coco(root, "val", transforms=None)
    detections = Detections(ds, list(range(len(ds))), seed=seed)
    outputs = relabelled(detections.outputs, {c: label for label, c in enumerate(SYNTHETIC_CONTIGUOUS)})
    evaluator = CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend, label_to_category_id=SYNTHETIC_CONTIGUOUS)
    return ds, detections, outputs, run_evaluator(evaluator, [outputs])


def test_contiguous_labels_are_scored_as_their_category_ids(synthetic_root, backend):
    contiguous = coco_utils.get_coco(synthetic_root, "val", transforms=None, contiguous_labels=True)
    assert contiguous.label_to_category_id == SYNTHETIC_CONTIGUOUS
    outputs = perfect_outputs(contiguous)
    assert {int(v) for o in outputs.values() for v in o["labels"]} == {1, 2, 3, 4}
    mapped = run_evaluator(
        CocoEvaluator(
            contiguous.coco, ["bbox", "segm"], backend=backend, label_to_category_id=contiguous.label_to_category_id
        ),
        [outputs],
    )
    unmapped = run_evaluator(CocoEvaluator(contiguous.coco, ["bbox", "segm"], backend=backend), [outputs])
    for iou_type in ("bbox", "segm"):
        assert mapped.coco_eval[iou_type].stats[0] == pytest.approx(1.0)
        assert unmapped.coco_eval[iou_type].stats[0] < 0.5  # labels 1, 3, 4 are no category; label 2 is another one


def test_mapped_labels_score_exactly_as_category_ids(synthetic_root, tmp_path, backend):
    ds, detections, contiguous_outputs, mapped = contiguous_detections(synthetic_root, 0, backend)
    direct = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), detections.chunks(3))
    unmapped = run_evaluator(CocoEvaluator(ds.coco, ["bbox", "segm"], backend=backend), [contiguous_outputs])
    for iou_type in ("bbox", "segm"):
        stats = mapped.coco_eval[iou_type].stats
        assert len(stats) == 12 and 0 < stats[0] < 1
        assert stats.tolist() == direct.coco_eval[iou_type].stats.tolist()  # exactly
        assert unmapped.coco_eval[iou_type].stats[0] < stats[0]


def test_detections_are_a_results_file_with_category_ids_that_pycocotools_scores_alike(
    synthetic_root, tmp_path, backend
):
    ds, detections, outputs, evaluator = contiguous_detections(synthetic_root, 1, backend)
    entries = evaluator.detections()
    # One entry per detection, each with both IoU types' fields and the category id (not the label).
    assert len(entries) == len(detections.bbox) == sum(len(o["labels"]) for o in outputs.values())
    assert all(set(e) == {"image_id", "category_id", "score", "bbox", "segmentation"} for e in entries)
    assert {e["category_id"] for e in entries} == {2, 5, 11, 17}

    def key(entry: dict) -> tuple:
        return entry["image_id"], entry["score"]

    expected = [{**b, **s} for b, s in zip(sorted(detections.bbox, key=key), sorted(detections.segm, key=key))]
    assert sorted(entries, key=key) == expected
    # A results file pycocotools reads: the same numbers as the evaluator's. As detectron2 does for segm,
    # drop the bbox there, else loadRes takes each mask's area from its box.
    results = json.loads(json.dumps(entries))
    gt = load_coco(ann_file(synthetic_root))
    assert_stats_equal(evaluator.coco_eval["bbox"].stats, pycocotools_stats(gt, results, "bbox", tmp_path))
    masks_only = [{k: v for k, v in e.items() if k != "bbox"} for e in results]
    assert_stats_equal(evaluator.coco_eval["segm"].stats, pycocotools_stats(gt, masks_only, "segm", tmp_path))


def test_results_file_entries_carry_every_iou_types_field():
    prediction = {
        "boxes": torch.tensor([[1.0, 2.0, 4.5, 8.0], [0.0, 0.0, 2.0, 2.0]]),
        "scores": torch.tensor([0.75, 0.5]),
        "labels": torch.tensor([1, 1]),
        "keypoints": torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3),
    }
    result = coco_eval.compact_result(prediction, ["bbox", "keypoints"])
    entries = coco_eval.results_file_entries(7, result, ["bbox", "keypoints"])
    assert entries == [
        {"image_id": 7, "category_id": 1, "score": 0.75, "bbox": [1.0, 2.0, 3.5, 6.0], "keypoints": list(range(51))},
        {
            "image_id": 7,
            "category_id": 1,
            "score": 0.5,
            "bbox": [0.0, 0.0, 2.0, 2.0],
            "keypoints": list(range(51, 102)),
        },
    ]
    assert (
        coco_eval.results_file_entries(
            7, coco_eval.compact_result({k: v[:0] for k, v in prediction.items()}, ["bbox"]), ["bbox"]
        )
        == []
    )


def test_ground_truth_keypoints_score_one_on_the_synthetic_keypoint_dataset(synthetic_kp_root, backend):
    ds = coco_utils.get_coco(synthetic_kp_root, "val", transforms=None, dataset="coco_kp", with_masks=False)
    outputs = perfect_outputs(ds, ("bbox", "keypoints"))
    for output in outputs.values():
        output["scores"] = torch.ones(len(output["labels"]))
    gt = coco_utils.get_coco_api_from_dataset(ds)
    evaluator = run_evaluator(
        CocoEvaluator(gt, ["bbox", "keypoints"], backend=backend, label_to_category_id=ds.label_to_category_id),
        [outputs],
    )
    stats = evaluator.coco_eval["keypoints"].stats
    assert len(stats) == 10
    assert stats[0] == pytest.approx(1.0) and stats[5] == pytest.approx(1.0)  # AP and AR
    assert evaluator.coco_eval["bbox"].stats[0] == pytest.approx(1.0)
    entries = evaluator.detections()
    assert len(entries) == len(gt.dataset["annotations"]) and all(
        len(e["keypoints"]) == 51 and e["category_id"] == 1 for e in entries
    )
    # Each person's keypoints swapped left for right: the same boxes, keypoints off by a body's width.
    flip = torch.tensor(keypoint_flip_indices(ds.keypoint_names))
    swapped = {i: {**o, "keypoints": o["keypoints"][:, flip]} for i, o in outputs.items()}
    worse = run_evaluator(
        CocoEvaluator(gt, ["keypoints"], backend=backend, label_to_category_id=ds.label_to_category_id), [swapped]
    )
    assert worse.coco_eval["keypoints"].stats[0] < 0.9


def test_an_exported_file_without_area_and_iscrowd_scores_as_pycocotools_on_the_completed_file(
    exported_root, tmp_path, backend, capsys
):
    """Exporters leave out area (faster-coco-eval then counts every object as small) and iscrowd (pycocotools then
    stops), and number annotations from 0 (which both take for 'unmatched'): filled and shifted as COCO defines
    them, both backends give pycocotools' numbers on the file as COCO would have it."""
    folder = exported_root / "val"
    ds = coco_utils.get_coco(
        None, "val", None, img_folder=folder, ann_file=folder / "_annotations.coco.json", contiguous_labels=True,
        leave_out_unused_categories=True,
    )  # fmt: skip
    assert ds.label_to_category_id == [0, 1, 2, 3, 4]  # labels are the category ids: Detections writes labels
    evaluator = CocoEvaluator(coco_utils.get_coco_api_from_dataset(ds), ["bbox", "segm"], backend=backend)
    total = len(ds.coco.anns)
    out = capsys.readouterr().out
    assert f'{total} without "area", {total} without "iscrowd" of {total} annotations' in out
    assert "annotation ids start at 0" in out and "every annotation id + 1" in out
    detections = Detections(ds, list(range(len(ds))), seed=8)
    run_evaluator(evaluator, detections.chunks(3))
    completed = load_coco(folder / "completed.json")
    from_zero = json.loads((folder / "completed.json").read_text())
    for annotation in from_zero["annotations"]:
        annotation["id"] -= 1
    (tmp_path / "from_zero.json").write_text(json.dumps(from_zero))
    for iou_type, results in (("bbox", detections.bbox), ("segm", detections.segm)):
        expected = pycocotools_stats(completed, results, iou_type, tmp_path)
        assert expected[0] > 0.3 and expected[3] != -1 and expected[4] != -1  # small and medium: area matters
        assert_stats_equal(evaluator.coco_eval[iou_type].stats, expected)
        # what pycocotools says with the exporter's ids: a detection of annotation 0 counts as a false positive
        assert pycocotools_stats(load_coco(tmp_path / "from_zero.json"), results, iou_type, tmp_path)[0] < expected[0]

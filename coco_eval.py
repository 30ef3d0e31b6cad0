"""COCO evaluation of detection outputs: the evaluator contract, and CocoEvaluator, which fulfils it.

engine.evaluate and train.py need these of an evaluator (`Evaluator`, written down below):

    evaluator = CocoEvaluator(coco_gt, ["bbox", "segm"])    # backend="faster_coco_eval" (default) or "pycocotools"
    evaluator.update({image_id: output, ...})               # per batch, outputs still on the model's device
    evaluator.synchronize_between_processes()                # merge all ranks' results
    metrics = evaluator.summarize()                          # print the tables; {"bbox": {"AP": ..., ...}, ...}
    evaluator.detections()                                   # COCO results entries, for --save-predictions

The torchvision reference's pattern works too: `accumulate()`, then `summarize()`, then
`coco_eval["segm"].stats` for the 12 numbers.

Unlike the reference:
- `update` only turns outputs into compact per-image results (float32 arrays, one compressed RLE
  string per mask); the backend's evaluate() runs once over all images in `accumulate()`. That is
  exactly what pycocotools gives when run by hand on the same detections, and much faster.
- Masks are RLE-encoded from where they change value, without full-size images (masks.py). Under
  masks.unpasted_masks(model), Mask R-CNN returns its 28x28 mask probabilities, which `update` pastes
  on the model's device, for all boxes of an image at once and only where a box's column crosses the
  threshold. Full-size masks given to `update` are encoded within each mask's extent.
- Results are kept per image id, so an image evaluated on two ranks (a padded distributed
  sampler) counts once.
- faster-coco-eval (C++) gives pycocotools' numbers several times faster; pycocotools stays
  selectable. Where the two differ: faster-coco-eval's means can differ in the last bit (tests
  compare to 1e-12; 6e-17 seen at most), it prints two more lines (AR at IoU 0.5 and 0.75) after
  the table, left out here, and for keypoints it leaves out categories without ground truth,
  which pycocotools counts as -1 and leaves out of the means: the same numbers.
"""

import contextlib
import gc
import io
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from pycocotools import mask as mask_utils

import distributed
import errors
from masks import encode_masks, paste_masks_to_rles

IOU_TYPES = ("bbox", "segm", "keypoints")
BACKENDS = ("faster_coco_eval", "pycocotools")
DEFAULT_BACKEND = "faster_coco_eval"
# The names of COCOeval.stats, in its order (pycocotools' summarize()).
COCO_STAT_NAMES = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"),
}


# ----------------------------------------------------------------------------- the evaluator contract


class Evaluator(Protocol):
    """What engine.evaluate needs of an evaluator; pass one as its `evaluator` to score in another way.

    `update` gets each batch's outputs by image id: dicts of tensors as the model returns them (boxes,
    labels, scores; masks or keypoints), still on the model's device. An evaluator whose
    `accepts_unpasted_masks` is true gets Mask R-CNN's unpasted masks instead of "masks": "raw_masks"
    (N, 1, 28, 28) and "image_size" (see masks.unpasted_masks). `synchronize_between_processes` runs on
    every rank after the last batch; then `summarize` prints the evaluation's tables and returns its
    numbers, by group (an IoU type) and name, which it also keeps as `metrics`: the metrics.jsonl record holds them,
    and the end-of-run summary names each group's "AP", or its first number. `detections` gives what
    --save-predictions writes (rank 0, after summarize): a JSON-ready list, COCO's results format for CocoEvaluator.
    train.py makes one per evaluation from an engine.EvaluatorFactory (main(..., evaluators=)).
    """

    accepts_unpasted_masks: bool
    metrics: dict[str, dict[str, float]]

    def update(self, predictions: dict[int, dict[str, Any]]) -> None: ...

    def synchronize_between_processes(self) -> None: ...

    def summarize(self) -> dict[str, dict[str, float]]: ...

    def detections(self) -> list[dict]: ...


# ----------------------------------------------------------------------------- compact results


def _masks_of(prediction: dict) -> tuple[list[bytes], tuple[int, int]]:
    if "raw_masks" in prediction:
        size = tuple(int(v) for v in prediction["image_size"])
        return paste_masks_to_rles(prediction["raw_masks"], prediction["boxes"], size), size
    if "masks" in prediction:
        return encode_masks(prediction["masks"]), tuple(prediction["masks"].shape[-2:])
    raise ValueError("segm evaluation needs 'masks' (N, 1, H, W) or 'raw_masks' with 'image_size' (see unpasted_masks)")


def compact_result(
    prediction: dict, iou_types: Sequence[str], label_to_category_id: np.ndarray | None = None
) -> dict[str, Any]:
    """One image's model output as small CPU arrays: scores, labels as category ids (models predict labels:
    `label_to_category_id` maps them, None when they are the category ids), and per IoU type xywh boxes
    (float32, as the reference computes them), compressed RLE strings, or keypoints."""
    labels = prediction["labels"].detach().cpu().numpy().astype(np.int64)
    result: dict[str, Any] = {
        "scores": prediction["scores"].detach().cpu().numpy(),
        "labels": labels if label_to_category_id is None else label_to_category_id[labels],
    }
    for iou_type in iou_types:
        if iou_type == "bbox":
            boxes = prediction["boxes"].detach()
            result["boxes"] = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).cpu().numpy()
        elif iou_type == "segm":
            result["rles"], result["mask_size"] = _masks_of(prediction)
        elif iou_type == "keypoints":
            result["keypoints"] = prediction["keypoints"].detach().flatten(start_dim=1).cpu().numpy()
        else:
            raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
    return result


def coco_results(image_id: int, result: dict[str, Any], iou_type: str) -> list[dict]:
    """The COCO results-file entries of one image's compact result, for one IoU type."""
    if iou_type == "bbox":
        values = [{"bbox": box} for box in result["boxes"].tolist()]
    elif iou_type == "segm":
        size = list(result["mask_size"])
        values = [{"segmentation": {"size": size, "counts": counts.decode("ascii")}} for counts in result["rles"]]
    elif iou_type == "keypoints":
        values = [{"keypoints": keypoints} for keypoints in result["keypoints"].tolist()]
    else:
        raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
    return [
        {"image_id": image_id, "category_id": label, "score": score, **value}
        for label, score, value in zip(result["labels"].tolist(), result["scores"].tolist(), values)
    ]


def results_file_entries(image_id: int, result: dict[str, Any], iou_types: Sequence[str]) -> list[dict]:
    """One image's detections for a results file: one entry per detection, with every IoU type's field."""
    entries = coco_results(image_id, result, iou_types[0])
    for iou_type in iou_types[1:]:
        for entry, other in zip(entries, coco_results(image_id, result, iou_type)):
            entry.update(other)
    return entries


def _add_what_load_res_adds(detections: list[dict], iou_type: str) -> None:
    """What COCO.loadRes adds to box and mask results before evaluation (an id in order, iscrowd 0,
    the area; a mask's box), with one pycocotools call for all masks instead of two per mask."""
    if iou_type == "segm" and detections:
        segmentations = [d["segmentation"] for d in detections]
        # pycocotools' area() overflows past 255 masks a call under numpy 2
        areas = np.concatenate([mask_utils.area(segmentations[i : i + 255]) for i in range(0, len(segmentations), 255)])
        for detection, area, box in zip(detections, areas, mask_utils.toBbox(segmentations).tolist()):
            detection.update(area=area, bbox=box)
    elif iou_type == "bbox":
        for detection in detections:
            detection["area"] = detection["bbox"][2] * detection["bbox"][3]
    for number, detection in enumerate(detections, start=1):
        detection.update(id=number, iscrowd=0)


# ----------------------------------------------------------------------------- backends


def backend_classes(backend: str) -> tuple[type, type]:
    """The (COCO, COCOeval) classes of an evaluation backend; a UsageError if it cannot be used."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise errors.UsageError(
                "--eval-backend faster_coco_eval: the faster-coco-eval package is not installed; "
                "pip install faster-coco-eval, or pass --eval-backend pycocotools"
            ) from None
        return COCO, COCOeval_faster
    raise errors.UsageError(f"--eval-backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def coco_index(data: dict, coco_class: type | None = None) -> Any:
    """A COCO index over an in-memory annotation dict (pycocotools' COCO, or a backend's `coco_class`), without its
    console chatter: the one place such an index is built."""
    if coco_class is None:
        from pycocotools.coco import COCO as coco_class
    coco = coco_class()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth_for(coco_gt: Any, coco_class: type) -> Any:
    if isinstance(coco_gt, coco_class):
        return coco_gt
    data = dict(coco_gt.dataset)
    # Evaluation adds keys to the ground-truth annotations: keep the caller's dicts as they were.
    data["annotations"] = [dict(annotation) for annotation in data.get("annotations", [])]
    return coco_index(data, coco_class)


def _new_coco_eval(coco_eval_class: type, coco_gt: Any, iou_type: str) -> Any:
    if coco_eval_class.__module__.startswith("faster_coco_eval"):
        # its default reports through logging; summarize() should print its table as pycocotools does
        coco_eval = coco_eval_class(coco_gt, iouType=iou_type, print_function=print)
    else:
        coco_eval = coco_eval_class(coco_gt, iouType=iou_type)
    if iou_type == "keypoints":
        _fit_oks_sigmas(coco_eval.params, coco_gt)
    return coco_eval


def _fit_oks_sigmas(params: Any, coco_gt: Any) -> None:
    """OKS needs one sigma per keypoint and the backends carry COCO's 17 person ones: a dataset with
    another number of keypoints gets their mean for each of its own (no per-keypoint values exist for it)."""
    count = max((len(c.get("keypoints", [])) for c in coco_gt.dataset.get("categories", [])), default=0)
    if count and count != len(params.kpt_oks_sigmas):
        params.kpt_oks_sigmas = np.full(count, float(np.mean(params.kpt_oks_sigmas)))


def named_stats(coco_evals: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each COCOeval's summary numbers (.stats) by IoU type and name, as plain floats (JSON-ready)."""
    return {
        iou_type: {name: float(value) for name, value in zip(COCO_STAT_NAMES[iou_type], coco_eval.stats)}
        for iou_type, coco_eval in coco_evals.items()
    }


def _mean_precision(precision: np.ndarray) -> float:
    """pycocotools' mean over the entries that are defined (-1 marks none), or -1."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else -1.0


def per_category(coco_eval: Any, categories: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Each category's AP, AP50 and AP75 (all areas, the most detections) from the accumulated precision array:
    what pycocotools gives with params.catIds = [that category], with no second evaluation. Keyed by name (by
    "name (id)" where two categories share one)."""
    precision = coco_eval.eval["precision"]  # iou thresholds x recall x categories x areas x max detections
    thresholds = np.asarray(coco_eval.params.iouThrs)
    names = [categories.get(i, {}).get("name", str(i)) for i in coco_eval.params.catIds]
    table = {}
    for k, (category_id, name) in enumerate(zip(coco_eval.params.catIds, names)):
        at = precision[:, :, k, 0, -1]
        key = name if names.count(name) == 1 else f"{name} ({category_id})"
        table[key] = {
            "AP": _mean_precision(at),
            "AP50": _mean_precision(at[np.where(thresholds == 0.5)[0]]),
            "AP75": _mean_precision(at[np.where(thresholds == 0.75)[0]]),
        }
    return table


def per_category_table(iou_type: str, table: dict[str, dict[str, float]]) -> str:
    """The per-category numbers as a small console table (-1: nothing to score)."""
    width = max([len("category"), *map(len, table)])
    lines = [f"Per category ({iou_type}):", f"  {'category':<{width}}      AP    AP50    AP75"]
    for name, numbers in table.items():
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{numbers[k]:6.3f}" for k in ("AP", "AP50", "AP75")))
    return "\n".join(lines)


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Building a dict per detection (10^5 of them and more) would set off the cyclic garbage
    collector again and again, each time walking every live object of the process (30x slower
    for 5000 masks measured); the dicts hold no cycles, so it can wait until the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class CocoEvaluator:
    """Collects detections per image and scores them against `coco_gt` (a pycocotools-style COCO index):
    an Evaluator."""

    accepts_unpasted_masks = True

    def __init__(
        self,
        coco_gt: Any,
        iou_types: Sequence[str],
        backend: str = DEFAULT_BACKEND,
        label_to_category_id: Sequence[int] | None = None,
    ):
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown:
            raise ValueError(f"unknown iou types {unknown}; expected some of {IOU_TYPES}")
        self.backend = backend
        self._coco_class, coco_eval_class = backend_classes(backend)
        self.coco_gt = coco_gt
        self._gt = _ground_truth_for(coco_gt, self._coco_class)
        self.iou_types = list(iou_types)
        # Created up front, so callers may adjust .params before accumulate(), as with the reference.
        self.coco_eval = {t: _new_coco_eval(coco_eval_class, self._gt, t) for t in self.iou_types}
        self.image_results: dict[int, dict[str, Any]] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self._accumulated = False
        # Models predict labels; results files hold category ids (the same numbers when labels are category ids).
        self._category_ids = None if label_to_category_id is None else np.asarray(label_to_category_id, dtype=np.int64)

    @property
    def img_ids(self) -> list[int]:
        return sorted(self.image_results)

    def update(self, predictions: dict[int, dict[str, Any]]) -> None:
        """Keep each image's detections (a later result for the same image id replaces the earlier one)."""
        for image_id, prediction in predictions.items():
            self.image_results[int(image_id)] = compact_result(prediction, self.iou_types, self._category_ids)
        self._accumulated = False

    def synchronize_between_processes(self) -> None:
        """Give every rank the union of all ranks' results (numpy arrays and RLE strings, not dicts per detection)."""
        for rank_results in distributed.all_gather(self.image_results):
            self.image_results.update(rank_results)
        self._accumulated = False
        print(f"Evaluated {len(self.img_ids)} images")

    def _load_detections(self, iou_type: str) -> Any:
        """The detections as the backend's COCO index, as gt.loadRes(results) builds it."""
        unknown = sorted(set(self.image_results) - set(self._gt.imgs))
        if unknown:
            raise ValueError(f"detections for image ids not in the ground truth: {unknown[:5]}")
        detections = [
            d for image_id in self.img_ids for d in coco_results(image_id, self.image_results[image_id], iou_type)
        ]
        dataset = self._gt.dataset
        if iou_type == "keypoints":
            if not detections:  # pycocotools' loadRes cannot take an empty list
                return coco_index(
                    {"images": dataset["images"], "annotations": [], "categories": dataset["categories"]},
                    self._coco_class,
                )
            with contextlib.redirect_stdout(io.StringIO()):
                return self._gt.loadRes(detections)
        _add_what_load_res_adds(detections, iou_type)
        return coco_index(
            {"images": dataset["images"], "annotations": detections, "categories": dataset["categories"]},
            self._coco_class,
        )

    def accumulate(self) -> None:
        """Run the backend's evaluate() and accumulate() over every image seen, once per IoU type."""
        for iou_type, coco_eval in self.coco_eval.items():
            with _without_cyclic_gc():
                coco_eval.cocoDt = self._load_detections(iou_type)
                coco_eval.params.imgIds = self.img_ids
                with contextlib.redirect_stdout(io.StringIO()):
                    coco_eval.evaluate()
                    coco_eval.accumulate()
        self._accumulated = True

    def detections(self) -> list[dict]:
        """Every image's detections as one COCO results list, each entry with all the IoU types' fields
        (bbox, segmentation, keypoints), as detectron2's results files have them. Detections of labels that
        are no category are left out: with the reference's labels (the category ids, num_classes = largest
        id + 1) the classifier also scores the ids between categories (COCO's 12, 26...); COCOeval ignores them."""
        categories = set(self._gt.getCatIds())
        return [
            entry
            for image_id in self.img_ids
            for entry in results_file_entries(image_id, self.image_results[image_id], self.iou_types)
            if entry["category_id"] in categories
        ]

    def summarize(self) -> dict[str, dict[str, float]]:
        """Print pycocotools' 12-number table per IoU type (accumulating first if needed), fill
        coco_eval[iou_type].stats, and return (and keep as `metrics`) those numbers by name."""
        if not self._accumulated:
            self.accumulate()
        for iou_type, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {iou_type}")
            table = io.StringIO()
            with contextlib.redirect_stdout(table):
                coco_eval.summarize()
            # faster-coco-eval prints two more lines (AR at IoU 0.5 and 0.75) after the table's
            print("".join(table.getvalue().splitlines(keepends=True)[: len(coco_eval.stats)]), end="")
        self.metrics = named_stats(self.coco_eval)
        self.metrics["per_category"] = {t: per_category(e, self._gt.cats) for t, e in self.coco_eval.items()}
        for iou_type, table in self.metrics["per_category"].items():
            print(per_category_table(iou_type, table))
        return self.metrics

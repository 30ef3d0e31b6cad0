"""COCO-style evaluation of model outputs with pycocotools, with the torchvision reference's call pattern.

    evaluator = CocoEvaluator(coco_gt, ["bbox", "segm"])
    evaluator.update({image_id: output, ...})     # per batch
    evaluator.synchronize_between_processes()      # merge all ranks' results
    evaluator.accumulate(); evaluator.summarize()
    evaluator.coco_eval["segm"].stats              # the 12 numbers

Unlike the reference, `update` only converts and stores detections; pycocotools' `evaluate()`
runs once over all images in `accumulate()`, which is both faster and exactly what
pycocotools gives when run by hand on the same detections. Results are kept per image id, so
an image evaluated on two ranks (a padded distributed sampler) counts once.
"""

import contextlib
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import utils
from coco_utils import coco_from_dict

IOU_TYPES = ("bbox", "segm", "keypoints")


def _xyxy_to_xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = boxes.clone()
    boxes[:, 2:] -= boxes[:, :2]
    return boxes.tolist()


def encode_masks(masks: torch.Tensor, threshold: float = 0.5) -> list[dict]:
    """RLE-encode (N, 1, H, W) mask probabilities thresholded at `threshold`, in one pycocotools call."""
    if len(masks) == 0:
        return []
    binary = (masks[:, 0] > threshold).permute(1, 2, 0).numpy().astype(np.uint8)
    return mask_utils.encode(np.asfortranarray(binary))


def prepare_results(image_id: int, prediction: dict, iou_type: str) -> list[dict]:
    """COCO result dicts for one image's model output (boxes xyxy, scores, labels = category ids)."""
    scores = prediction["scores"].tolist()
    labels = prediction["labels"].tolist()
    base = [{"image_id": image_id, "category_id": label, "score": score} for label, score in zip(labels, scores)]
    if iou_type == "bbox":
        extra = [{"bbox": box} for box in _xyxy_to_xywh(prediction["boxes"])]
    elif iou_type == "segm":
        extra = [{"segmentation": rle} for rle in encode_masks(prediction["masks"])]
    elif iou_type == "keypoints":
        extra = [{"keypoints": kps} for kps in prediction["keypoints"].flatten(start_dim=1).tolist()]
    else:
        raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
    return [{**b, **e} for b, e in zip(base, extra)]


class CocoEvaluator:
    """Collects detections per image and scores them against `coco_gt` (a pycocotools COCO)."""

    def __init__(self, coco_gt: COCO, iou_types: list[str] | tuple[str, ...]):
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown:
            raise ValueError(f"unknown iou types {unknown}; expected some of {IOU_TYPES}")
        self.coco_gt = coco_gt
        self.iou_types = list(iou_types)
        # Created up front, so callers may adjust .params before accumulate(), as with the reference.
        self.coco_eval = {t: COCOeval(coco_gt, iouType=t) for t in self.iou_types}
        self.results: dict[str, dict[int, list[dict]]] = {t: {} for t in self.iou_types}

    @property
    def img_ids(self) -> list[int]:
        return sorted(self.results[self.iou_types[0]]) if self.iou_types else []

    def update(self, predictions: dict[int, dict[str, torch.Tensor]]) -> None:
        for image_id, prediction in predictions.items():
            prediction = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in prediction.items()}
            for iou_type in self.iou_types:
                self.results[iou_type][int(image_id)] = prepare_results(int(image_id), prediction, iou_type)

    def synchronize_between_processes(self) -> None:
        """Give every rank the union of all ranks' results."""
        for rank_results in utils.all_gather(self.results):
            for iou_type, per_image in rank_results.items():
                self.results[iou_type].update(per_image)

    def _load_detections(self, iou_type: str) -> COCO:
        # Copies: loadRes adds keys (segm results get a bbox) to the dicts it is given.
        detections = [dict(d) for image_id in self.img_ids for d in self.results[iou_type][image_id]]
        if detections:
            with contextlib.redirect_stdout(io.StringIO()):
                return self.coco_gt.loadRes(detections)
        # loadRes cannot take an empty list
        return coco_from_dict(
            {"images": self.coco_gt.dataset["images"], "annotations": [], "categories": self.coco_gt.dataset["categories"]}
        )

    def accumulate(self) -> None:
        """Run pycocotools' evaluate() and accumulate() over every image seen, once per IoU type."""
        for iou_type, coco_eval in self.coco_eval.items():
            coco_eval.cocoDt = self._load_detections(iou_type)
            coco_eval.params.imgIds = self.img_ids
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval.evaluate()
                coco_eval.accumulate()

    def summarize(self) -> None:
        """Print the 12-number table per IoU type and fill coco_eval[iou_type].stats."""
        for iou_type, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {iou_type}")
            coco_eval.summarize()

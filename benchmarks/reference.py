"""The torchvision reference's evaluation path (references/detection), for the benchmarks to race ours against.

- ReferenceEvaluator: its CocoEvaluator, written out (the reference's coco_eval.py is not part of the torchvision
  package): a results dict per detection, each mask thresholded and RLE-encoded on its own, pycocotools' loadRes and
  evaluate() per update; at the end the per-image evaluations merged, accumulate(), summarize().
- validation_dataset: its validation set as `--use-v2` builds it, from torchvision's own pieces: datasets.CocoDetection
  wrapped for transforms v2, images converted to float in the worker.
- evaluate: its evaluate() loop, one torch thread as the reference sets, masks pasted by torchvision's model.
"""

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import torch
import torchvision
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.transforms import v2


class ReferenceEvaluator:
    """The torchvision reference's CocoEvaluator (references/detection/evaluation.py), one process."""

    def __init__(self, coco_gt: COCO, iou_types: list[str]):
        coco_gt = copy.deepcopy(coco_gt)  # the reference's own: COCOeval turns the ground truth's masks into RLE
        self.coco_gt = coco_gt
        self.coco_eval = {t: COCOeval(coco_gt, iouType=t) for t in iou_types}
        self.img_ids: list[int] = []
        self.eval_imgs: dict[str, list[np.ndarray]] = {t: [] for t in iou_types}

    @staticmethod
    def _results(predictions: dict, iou_type: str) -> list[dict]:
        results = []
        for image_id, prediction in predictions.items():
            scores, labels = prediction["scores"].tolist(), prediction["labels"].tolist()
            if iou_type == "bbox":
                x0, y0, x1, y1 = prediction["boxes"].unbind(1)
                values = [{"bbox": box} for box in torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1).tolist()]
            else:
                binary = prediction["masks"] > 0.5
                rles = [
                    mask_utils.encode(np.array(mask[0, :, :, np.newaxis], dtype=np.uint8, order="F"))[0]
                    for mask in binary
                ]
                for rle in rles:
                    rle["counts"] = rle["counts"].decode("utf-8")
                values = [{"segmentation": rle} for rle in rles]
            results += [
                {"image_id": image_id, "category_id": c, "score": s, **v} for c, s, v in zip(labels, scores, values)
            ]
        return results

    def update(self, predictions: dict) -> None:
        img_ids = list(np.unique(list(predictions.keys())))
        self.img_ids.extend(img_ids)
        for iou_type, evaluation in self.coco_eval.items():
            results = self._results(predictions, iou_type)
            with contextlib.redirect_stdout(io.StringIO()):
                evaluation.cocoDt = self.coco_gt.loadRes(results) if results else COCO()
                evaluation.params.imgIds = list(img_ids)
                evaluation.evaluate()
            shape = (-1, len(evaluation.params.areaRng), len(evaluation.params.imgIds))
            self.eval_imgs[iou_type].append(np.asarray(evaluation.evalImgs).reshape(shape))

    def synchronize_between_processes(self) -> None:
        """One process: merge the per-update evaluations, each image once, by image id."""
        for iou_type, evaluation in self.coco_eval.items():
            img_ids, first = np.unique(self.img_ids, return_index=True)
            evaluation.evalImgs = list(np.concatenate(self.eval_imgs[iou_type], axis=2)[..., first].flatten())
            evaluation.params.imgIds = list(img_ids)
            evaluation._paramsEval = copy.deepcopy(evaluation.params)

    def accumulate(self) -> None:
        for evaluation in self.coco_eval.values():
            with contextlib.redirect_stdout(io.StringIO()):
                evaluation.accumulate()

    def summarize(self) -> None:
        for evaluation in self.coco_eval.values():
            evaluation.summarize()


def validation_dataset(img_folder: str | Path, ann_file: str | Path) -> torch.utils.data.Dataset:
    """The reference's get_coco(..., "val", use_v2=True): tv_tensors targets, float images in [0, 1]."""
    transforms = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float, scale=True), v2.ToPureTensor()])
    dataset = torchvision.datasets.CocoDetection(str(img_folder), str(ann_file), transforms=transforms)
    return torchvision.datasets.wrap_dataset_for_transforms_v2(
        dataset, target_keys={"boxes", "labels", "masks", "image_id"}
    )


def collate(batch: list) -> tuple:
    return tuple(zip(*batch))


def iou_types(model: torch.nn.Module) -> list[str]:
    """The reference's _get_iou_types."""
    types = ["bbox"]
    if isinstance(model, torchvision.models.detection.MaskRCNN):
        types.append("segm")
    if isinstance(model, torchvision.models.detection.KeypointRCNN):
        types.append("keypoints")
    return types


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, data_loader: torch.utils.data.DataLoader, device: torch.device, one_thread: bool = True
):
    """The reference's engine.evaluate, less its logging: returns the evaluator, whose coco_eval[t].stats hold the
    numbers. `one_thread=False` lifts its torch.set_num_threads(1), to show what that costs."""
    n_threads = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)  # the reference's ("FIXME remove this and make paste_masks_in_image run on the GPU")
    cpu_device = torch.device("cpu")
    model.eval()
    evaluator = ReferenceEvaluator(data_loader.dataset.coco, iou_types(model))
    for images, targets in data_loader:
        images = [image.to(device) for image in images]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        outputs = model(images)
        outputs = [{k: v.to(cpu_device) for k, v in t.items()} for t in outputs]
        evaluator.update({target["image_id"]: output for target, output in zip(targets, outputs)})
    evaluator.synchronize_between_processes()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    torch.set_num_threads(n_threads)
    return evaluator

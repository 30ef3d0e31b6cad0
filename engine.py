"""The training and evaluation loops: one epoch of training, one pass of COCO evaluation."""

import contextlib
import math
import sys
import time
from collections.abc import Iterable

import torch

import utils
from coco_eval import DEFAULT_BACKEND, CocoEvaluator, unpasted_masks
from coco_utils import get_coco_api_from_dataset

WARMUP_FACTOR = 1.0 / 1000
WARMUP_MAX_ITERS = 1000


def images_to_device(images: Iterable[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Copy uint8 images to the device (a quarter of float's bytes), then scale them to [0, 1] there."""
    moved = []
    for image in images:
        image = image.to(device, non_blocking=True)
        moved.append(image.float().div_(255) if image.dtype == torch.uint8 else image.float())
    return moved


def targets_to_device(targets: Iterable[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def warmup_scheduler(optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> torch.optim.lr_scheduler.LinearLR | None:
    """The reference's warm-up: linear from lr/1000 over min(1000, iterations - 1) iterations of epoch 0."""
    warmup_iters = min(WARMUP_MAX_ITERS, iters_per_epoch - 1)
    if warmup_iters < 1:
        return None
    return torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=WARMUP_FACTOR, total_iters=warmup_iters)


def _stop_on_non_finite(loss_value: float, loss_dict: dict[str, torch.Tensor], epoch: int, iteration: int) -> None:
    if math.isfinite(loss_value):
        return
    losses = ", ".join(f"{name}={value.item():.4g}" for name, value in loss_dict.items())
    print(f"Loss is {loss_value} at epoch {epoch}, iteration {iteration}; stopping training. Losses: {losses}")
    sys.exit(1)


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable,
    device: torch.device,
    epoch: int,
    print_freq: int,
    scaler: torch.amp.GradScaler | None = None,
) -> utils.MetricLogger:
    """Train for one pass over `data_loader`; with a `scaler`, under autocast (mixed precision)."""
    model.train()
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    warmup = warmup_scheduler(optimizer, len(data_loader)) if epoch == 0 else None

    for iteration, (images, targets) in enumerate(metric_logger.log_every(data_loader, print_freq, f"Epoch: [{epoch}]")):
        images = images_to_device(images, device)
        targets = targets_to_device(targets, device)
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())

        # Every rank logs (and checks) the same, averaged, losses, so every rank stops together.
        loss_dict_reduced = utils.reduce_dict(loss_dict)
        loss_reduced = sum(loss_dict_reduced.values())
        loss_value = loss_reduced.item()
        _stop_on_non_finite(loss_value, loss_dict_reduced, epoch, iteration)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if warmup is not None:
            warmup.step()

        metric_logger.update(loss=loss_value, **loss_dict_reduced)
        metric_logger.update(lr=optimizer.param_groups[0]["lr"])
    return metric_logger


def iou_types_of(model: torch.nn.Module) -> list[str]:
    """What a torchvision detection model predicts: boxes always, masks and keypoints by model class."""
    from torchvision.models.detection import KeypointRCNN, MaskRCNN

    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    iou_types = ["bbox"]
    if isinstance(model, MaskRCNN):
        iou_types.append("segm")
    if isinstance(model, KeypointRCNN):
        iou_types.append("keypoints")
    return iou_types


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that the times logged belong to the step that ran them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, data_loader: Iterable, device: torch.device, print_freq: int = 100, backend: str = DEFAULT_BACKEND
) -> CocoEvaluator:
    """Predict on every image of `data_loader` (all ranks' shards), then print and return the COCO metrics.

    Pass the model without its DistributedDataParallel wrapper: ranks may hold different numbers
    of images, and DDP's forward would wait on the other ranks. Mask R-CNN's masks are pasted and
    RLE-encoded on `device`, only where they change value (see coco_eval.unpasted_masks);
    `backend` scores the detections: "faster_coco_eval" or "pycocotools", with the same numbers.
    """
    model.eval()
    iou_types = iou_types_of(model)
    evaluator = CocoEvaluator(get_coco_api_from_dataset(data_loader.dataset), iou_types, backend=backend)
    metric_logger = utils.MetricLogger(delimiter="  ")
    masks_kept_small = unpasted_masks(model) if "segm" in iou_types else contextlib.nullcontext()
    with masks_kept_small:
        for images, targets in metric_logger.log_every(data_loader, print_freq, "Test:"):
            start = time.time()
            outputs = model(images_to_device(images, device))
            _synchronize(device)
            model_time = time.time() - start
            start = time.time()
            evaluator.update({target["image_id"]: output for target, output in zip(targets, outputs)})
            metric_logger.update(model_time=model_time, evaluator_time=time.time() - start)

    evaluator.synchronize_between_processes()
    print(f"Evaluated {len(evaluator.img_ids)} images")
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator

"""The training and evaluation loops: one epoch of training, one pass of COCO evaluation."""

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable

import torch

import utils
from coco_eval import DEFAULT_BACKEND, CocoEvaluator, unpasted_masks
from coco_utils import base_dataset, get_coco_api_from_dataset

WARMUP_FACTOR = 1.0 / 1000
WARMUP_MAX_ITERS = 1000
STOP_KEY = "_stop_signal"  # rides along with the losses in their all-reduce


def images_to_device(images: Iterable[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Copy uint8 images to the device (a quarter of float's bytes), then scale them to [0, 1] there."""
    moved = []
    for image in images:
        image = image.to(device, non_blocking=True)
        moved.append(image.float().div_(255) if image.dtype == torch.uint8 else image.float())
    return moved


def targets_to_device(targets: Iterable[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


class LinearWarmup:
    """The reference's warm-up: the lr rises linearly from lr/1000 to lr over the first
    min(1000, iterations - 1) iterations of epoch 0.

    Computed from the iteration alone (the reference steps a LinearLR), so a run resumed in the
    middle of the warm-up sets exactly the lr the uninterrupted run had.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, iters_per_epoch: int):
        self.optimizer = optimizer
        self.iters = min(WARMUP_MAX_ITERS, iters_per_epoch - 1)
        # The lr the epoch scheduler started from; a resumed optimizer's "lr" holds a warmed-up value.
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]

    def factor(self, iteration: int) -> float:
        if iteration >= self.iters:
            return 1.0
        progress = iteration / self.iters
        return WARMUP_FACTOR * (1 - progress) + progress

    def set_lr(self, iteration: int) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * self.factor(iteration)


class NonFiniteLossError(Exception):
    """A loss became NaN or infinite; raised before the optimizer step, so no weight is spoiled."""


class TrainingStopped(Exception):
    """Every rank agreed to stop (a stop signal arrived) after `iteration` iterations of `epoch`."""

    def __init__(self, epoch: int, iteration: int, signum: int):
        super().__init__(f"stopped at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration, self.signum = epoch, iteration, signum


def _reduce_losses_and_stop(loss_dict: dict[str, torch.Tensor], stop: utils.StopSignal | None) -> tuple[dict[str, float], int]:
    """Average the losses over ranks and learn whether any rank received a stop signal: one collective and
    one copy to the host (the one device sync of an iteration). Returns the averaged losses as floats and
    the signal to stop for (this rank's own, or SIGTERM for another rank's), or 0."""
    signum = stop.signum if stop is not None and stop.received else 0
    if utils.get_world_size() < 2:
        return _to_floats(loss_dict), signum
    flag = next(iter(loss_dict.values())).detach().new_tensor(float(signum > 0))
    reduced = _to_floats(utils.reduce_dict(loss_dict | {STOP_KEY: flag}))
    if reduced.pop(STOP_KEY) > 0:
        return reduced, signum or signal.SIGTERM
    return reduced, 0


def _to_floats(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """All losses to the host in one copy (one .item() each would be one device sync each)."""
    values = torch.stack([v.detach().float() for v in loss_dict.values()]).tolist()
    return dict(zip(loss_dict, values))


def _check_finite(loss_value: float, losses: dict[str, float], epoch: int, iteration: int) -> None:
    if math.isfinite(loss_value):
        return
    losses = ", ".join(f"{name}={value:.4g}" for name, value in losses.items())
    raise NonFiniteLossError(
        f"loss is {loss_value} at epoch {epoch}, iteration {iteration} ({losses}); stopped before the optimizer step, "
        "the last checkpoint is untouched: lower --lr, or try --clip-grad-norm"
    )


def _backward_and_step(loss, optimizer, scaler, clip_grad_norm: float | None) -> torch.Tensor | None:
    """One optimizer step, under a GradScaler when mixed precision; returns the gradient norm when clipping."""
    optimizer.zero_grad(set_to_none=True)
    grad_norm = None
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad_norm is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            grad_norm = _clip(optimizer, clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad_norm is not None:
            grad_norm = _clip(optimizer, clip_grad_norm)
        optimizer.step()
    return grad_norm


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> torch.Tensor:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


# The numbers of a training log line that are not loss terms (train_one_epoch logs these and the losses, nothing else).
TRAINING_NUMBERS = ("lr", "loss", "grad_norm", "iter_time", "data_time", "max_mem_mb")


def training_record(epoch: int, iteration: int, iters_per_epoch: int, numbers: dict[str, float]) -> dict:
    """The metrics.jsonl record of one training iteration, from the numbers behind its log line."""
    record = {
        "type": "train",
        "epoch": epoch,
        "iteration": iteration,
        "global_iteration": epoch * iters_per_epoch + iteration,
        "lr": numbers["lr"],
        "loss": numbers["loss"],
        "losses": {name: value for name, value in numbers.items() if name not in TRAINING_NUMBERS},
    }
    # grad_norm comes with --clip-grad-norm only, max_mem_mb with CUDA only.
    record |= {name: numbers[name] for name in ("grad_norm", "iter_time", "data_time", "max_mem_mb") if name in numbers}
    return record | {"timestamp": time.time()}


def _record_writer(
    write_metrics: Callable[[dict], None] | None, epoch: int, iters_per_epoch: int
) -> Callable[[int, dict[str, float]], None] | None:
    """MetricLogger.log_every's on_print: each log line's numbers, as a training_record, to write_metrics."""
    if write_metrics is None:
        return None
    return lambda iteration, numbers: write_metrics(training_record(epoch, iteration, iters_per_epoch, numbers))


# The names of COCOeval.stats, in its order (pycocotools' summarize()).
COCO_STAT_NAMES = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
    "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"),
}


def evaluation_record(evaluator: CocoEvaluator, epoch: int, global_iteration: int) -> dict:
    """The metrics.jsonl record of an evaluation after `epoch` (`global_iteration` iterations trained):
    each IoU type's summary numbers, by name."""
    record = {"type": "eval", "epoch": epoch, "global_iteration": global_iteration}
    for iou_type, coco_eval in evaluator.coco_eval.items():
        record[iou_type] = {name: float(value) for name, value in zip(COCO_STAT_NAMES[iou_type], coco_eval.stats)}
    return record | {"timestamp": time.time()}


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable,
    device: torch.device,
    epoch: int,
    print_freq: int,
    scaler: torch.amp.GradScaler | None = None,
    *,
    first_iteration: int = 0,
    clip_grad_norm: float | None = None,
    stop: utils.StopSignal | None = None,
    after_step: Callable[[int], None] | None = None,
    write_metrics: Callable[[dict], None] | None = None,
) -> utils.MetricLogger:
    """Train for one pass over `data_loader`; with a `scaler`, under autocast (mixed precision).

    A resumed epoch passes the iterations already done as `first_iteration` (the loader yields
    only the rest). `after_step(iterations_done)` runs after every step (periodic checkpoints).
    `write_metrics(record)` gets a training_record with every log line (every `print_freq` iterations).
    When any rank has received a stop signal, every rank finishes the same iteration and raises
    TrainingStopped; a non-finite loss raises NonFiniteLossError before the optimizer step.
    """
    model.train()
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    iters_per_epoch = first_iteration + len(data_loader)
    warmup = LinearWarmup(optimizer, iters_per_epoch) if epoch == 0 else None

    on_print = _record_writer(write_metrics, epoch, iters_per_epoch)
    batches = metric_logger.log_every(data_loader, print_freq, f"Epoch: [{epoch}]", start=first_iteration, on_print=on_print)
    for iteration, (images, targets) in enumerate(batches, start=first_iteration):
        if warmup is not None:
            warmup.set_lr(iteration)
        images = images_to_device(images, device)
        targets = targets_to_device(targets, device)
        with torch.autocast(device_type=device.type, enabled=scaler is not None):
            loss_dict = model(images, targets)
            loss = sum(loss_dict.values())

        # Every rank checks the same averaged losses, and learns of any rank's stop signal, so all act together.
        losses, signum = _reduce_losses_and_stop(loss_dict, stop)
        loss_value = sum(losses.values())
        _check_finite(loss_value, losses, epoch, iteration)
        grad_norm = _backward_and_step(loss, optimizer, scaler, clip_grad_norm)

        metric_logger.update(loss=loss_value, **losses)
        if grad_norm is not None:
            metric_logger.update(grad_norm=grad_norm)
        metric_logger.update(lr=optimizer.param_groups[0]["lr"])
        if signum:
            raise TrainingStopped(epoch, iteration + 1, signum)
        if after_step is not None:
            after_step(iteration + 1)
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
    label_to_category_id = getattr(base_dataset(data_loader.dataset), "label_to_category_id", None)
    evaluator = CocoEvaluator(get_coco_api_from_dataset(data_loader.dataset), iou_types, backend, label_to_category_id)
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

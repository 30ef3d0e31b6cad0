"""The training and evaluation loops: one epoch of training, one pass of evaluation, and how a run stops.

train_one_epoch steps the model over a loader, setting each iteration's lr from solver.py's
schedule; it stops cleanly between two steps when a stop signal (SIGTERM, SIGUSR1) arrives on any
rank, and before the optimizer step when a loss is not finite. evaluate() runs the model over the
evaluation shards and hands the outputs to an evaluator (coco_eval.Evaluator; CocoEvaluator by default).
"""

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import torch

import utils
from coco_eval import DEFAULT_BACKEND, CocoEvaluator, Evaluator
from coco_utils import base_dataset, get_coco_api_from_dataset
from masks import unpasted_masks
from models import iou_types_of
from solver import WarmupLRScheduler

STOP_KEY = "_stop_signal"  # rides along with the losses in their all-reduce


def images_to_device(images: Iterable[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Copy uint8 images to the device (a quarter of float's bytes), then scale them to [0, 1] there."""
    moved = []
    for image in images:
        image = image.to(device, non_blocking=True)
        moved.append(image.float().div_(255) if image.dtype == torch.uint8 else image.float())
    return moved


def targets_to_device(targets: Iterable[dict], device: torch.device) -> list[dict]:
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignal:
    """Remembers that SIGTERM or SIGUSR1 (SLURM's --signal warning) arrived, so that training can
    finish its iteration, save and exit instead of dying mid-step."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def received(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            sys.stderr.write(f"Received {signal.Signals(signum).name}: stopping after this iteration\n")
        self.signum = signum


@contextlib.contextmanager
def catching_stop_signals() -> Iterator[StopSignal]:
    """Install StopSignal's handler for SIGTERM and SIGUSR1 (main thread only); restore the old ones on exit."""
    stop = StopSignal()
    previous = {s: signal.signal(s, stop._handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class NonFiniteLossError(Exception):
    """A loss became NaN or infinite; raised before the optimizer step, so no weight is spoiled."""


class TrainingStopped(Exception):
    """Every rank agreed to stop (a stop signal arrived) after `iteration` iterations of `epoch`."""

    def __init__(self, epoch: int, iteration: int, signum: int):
        super().__init__(f"stopped at epoch {epoch}, iteration {iteration}")
        self.epoch, self.iteration, self.signum = epoch, iteration, signum


def _reduce_losses_and_stop(
    loss_dict: dict[str, torch.Tensor], stop: StopSignal | None
) -> tuple[dict[str, float], int]:
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


def evaluation_record(metrics: dict[str, dict[str, float]], epoch: int, global_iteration: int) -> dict:
    """The metrics.jsonl record of an evaluation after `epoch` (`global_iteration` iterations trained): the
    evaluator's numbers (Evaluator.summarize(): each IoU type's, by name)."""
    return {"type": "eval", "epoch": epoch, "global_iteration": global_iteration, **metrics, "timestamp": time.time()}


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: Iterable,
    device: torch.device,
    epoch: int,
    print_freq: int,
    scaler: torch.amp.GradScaler | None = None,
    *,
    lr_scheduler: WarmupLRScheduler | None = None,
    first_iteration: int = 0,
    clip_grad_norm: float | None = None,
    stop: StopSignal | None = None,
    after_step: Callable[[int], None] | None = None,
    write_metrics: Callable[[dict], None] | None = None,
) -> utils.MetricLogger:
    """Train for one pass over `data_loader`; with a `scaler`, under autocast (mixed precision).

    `lr_scheduler` (solver.build_lr_scheduler) sets each iteration's lr; without one, epoch 0 warms up as the
    reference's does. A resumed epoch passes the iterations already done as `first_iteration` (the loader yields
    only the rest). `after_step(iterations_done)` runs after every step (periodic checkpoints).
    `write_metrics(record)` gets a training_record with every log line (every `print_freq` iterations).
    When any rank has received a stop signal, every rank finishes the same iteration and raises
    TrainingStopped; a non-finite loss raises NonFiniteLossError before the optimizer step.
    """
    model.train()
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    iters_per_epoch = first_iteration + len(data_loader)
    lr_scheduler = lr_scheduler or WarmupLRScheduler(optimizer, iters_per_epoch)

    on_print = _record_writer(write_metrics, epoch, iters_per_epoch)
    batches = metric_logger.log_every(
        data_loader, print_freq, f"Epoch: [{epoch}]", start=first_iteration, on_print=on_print
    )
    for iteration, (images, targets) in enumerate(batches, start=first_iteration):
        lr_scheduler.set_iteration(epoch, iteration)
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


def _synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that the times logged belong to the step that ran them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def coco_evaluator_for(data_loader: Iterable, model: torch.nn.Module, backend: str = DEFAULT_BACKEND) -> CocoEvaluator:
    """The default evaluator: COCO's metrics for what `model` predicts, against the loader's dataset's ground truth."""
    label_to_category_id = getattr(base_dataset(data_loader.dataset), "label_to_category_id", None)
    return CocoEvaluator(
        get_coco_api_from_dataset(data_loader.dataset), iou_types_of(model), backend, label_to_category_id
    )


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    data_loader: Iterable,
    device: torch.device,
    print_freq: int = 100,
    backend: str = DEFAULT_BACKEND,
    evaluator: Evaluator | None = None,
) -> Evaluator:
    """Predict on every image of `data_loader` (all ranks' shards), then print and return the evaluator,
    whose `metrics` hold the numbers.

    Pass the model without its DistributedDataParallel wrapper: ranks may hold different numbers
    of images, and DDP's forward would wait on the other ranks. `evaluator` defaults to a CocoEvaluator
    whose `backend` scores the detections ("faster_coco_eval" or "pycocotools", with the same numbers);
    it gets Mask R-CNN's masks unpasted, to paste and RLE-encode them on `device` only where they change
    value (see masks.unpasted_masks).
    """
    model.eval()
    if evaluator is None:
        evaluator = coco_evaluator_for(data_loader, model, backend)
    metric_logger = utils.MetricLogger(delimiter="  ")
    unpasted = evaluator.accepts_unpasted_masks and "segm" in iou_types_of(model)
    with unpasted_masks(model) if unpasted else contextlib.nullcontext():
        for images, targets in metric_logger.log_every(data_loader, print_freq, "Test:"):
            start = time.time()
            outputs = model(images_to_device(images, device))
            _synchronize(device)
            model_time = time.time() - start
            start = time.time()
            evaluator.update({target["image_id"]: output for target, output in zip(targets, outputs)})
            metric_logger.update(model_time=model_time, evaluator_time=time.time() - start)

    evaluator.synchronize_between_processes()
    evaluator.summarize()
    return evaluator

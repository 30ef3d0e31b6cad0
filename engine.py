"""The training and evaluation loops: one epoch of training, one pass of evaluation, the epochs of a run, and how a
run stops.

train_one_epoch steps the model over a loader, setting each iteration's lr from solver.py's
schedule; it stops cleanly between two steps when a stop signal (SIGTERM, SIGUSR1) arrives on any
rank, and before the optimizer step when a loss is not finite. evaluate() runs the model over the
evaluation shards and hands the outputs to an evaluator (coco_eval.Evaluator; CocoEvaluator by default).
"""

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import analysis
import checkpoint as ckpt
import distributed
import errors
import files
import metrics_log
import reporting
import utils
from coco_eval import DEFAULT_BACKEND, CocoEvaluator, Evaluator
from coco_utils import base_dataset, get_coco_api_from_dataset
from images import images_to_device
from masks import unpasted_masks
from models import iou_types_of
from samplers import ResumableBatchSampler
from solver import WarmupLRScheduler

STOP_KEY = "_stop_signal"  # rides along with the losses in their all-reduce


def targets_to_device(targets: Iterable[dict], device: torch.device) -> list[dict]:
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# A Ctrl-C this soon after the first is the same keypress forwarded (torchrun passes the terminal's SIGINT on to its
# workers, which had it from the terminal already), not a second one.
SECOND_CTRL_C_AFTER = 1.0  # seconds


class StopSignal:
    """Remembers that SIGTERM, SIGUSR1 (SLURM's --signal warning) or a first Ctrl-C (SIGINT) arrived, so that
    training can finish its iteration, save and exit instead of dying mid-step. A second Ctrl-C stops the process at
    once, with one line: a checkpoint being written is then left unfinished, and the previous one stays whole."""

    def __init__(self):
        self.signum: int | None = None
        self._first_ctrl_c: float | None = None

    @property
    def received(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self._first_ctrl_c is not None:
            if time.monotonic() - self._first_ctrl_c >= SECOND_CTRL_C_AFTER:
                sys.stderr.write("Second Ctrl-C: stopped at once, without saving; the last checkpoint is whole\n")
                sys.stderr.flush()
                os._exit(128 + signal.SIGINT)
            return
        if signum == signal.SIGINT:
            self._first_ctrl_c = time.monotonic()
        if self.signum is None:
            again = " (Ctrl-C again to stop at once, without saving)" if signum == signal.SIGINT else ""
            sys.stderr.write(f"Received {signal.Signals(signum).name}: stopping after this iteration{again}\n")
            self.signum = signum


@contextlib.contextmanager
def catching_stop_signals() -> Iterator[StopSignal]:
    """Install StopSignal's handler for SIGTERM, SIGUSR1 and SIGINT (main thread only); restore the old ones on
    exit."""
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
    if distributed.get_world_size() < 2:
        return _to_floats(loss_dict), signum
    flag = next(iter(loss_dict.values())).detach().new_tensor(float(signum > 0))
    reduced = _to_floats(distributed.reduce_dict(loss_dict | {STOP_KEY: flag}))
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


def run_record(recorded_flags: dict[str, Any], command: list[str] | None) -> dict:
    """The metrics.jsonl record of one train.py invocation, written first: its command line (None when main() was
    called from Python) and its flags as recorded (flags.as_recorded)."""
    return {"type": "run", "command": command, "flags": recorded_flags, "timestamp": time.time()}


def test_record(metrics: dict[str, dict[str, float]], weights: str | None, epoch: int | None) -> dict:
    """The metrics.jsonl record of a --test-only evaluation of `weights` (the file, trained `epoch` epochs if known)."""
    return {"type": "test", "weights": weights, "epoch": epoch, **metrics, "timestamp": time.time()}


def analysis_record(evaluator: Evaluator, data_loader: Iterable, of: str, epoch: int | None) -> dict | None:
    """The metrics.jsonl record of the error analysis of an evaluation (`of` "eval" after `epoch`, or "test"):
    analysis.analyze_evaluation of its detections against its ground truth. None for an evaluator without a COCO
    ground truth (a custom Evaluator) or a model whose IoU types have no analysis (keypoints)."""
    coco_gt = getattr(evaluator, "coco_gt", None)
    if coco_gt is None:
        return None
    folder = getattr(base_dataset(data_loader.dataset), "img_folder", None)
    iou_types = getattr(evaluator, "iou_types", [])
    body = analysis.analyze_evaluation(coco_gt.dataset, evaluator.detections(), iou_types, folder)
    if body is None:
        return None
    return {"type": "analysis", "of": of, "epoch": epoch, **body, "timestamp": time.time()}


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
    iterations_after: int | None = None,
) -> utils.MetricLogger:
    """Train for one pass over `data_loader`; with a `scaler`, under autocast (mixed precision).

    `lr_scheduler` (solver.build_lr_scheduler) sets each iteration's lr; without one, epoch 0 warms up as the
    reference's does. A resumed epoch passes the iterations already done as `first_iteration` (the loader yields
    only the rest). `after_step(iterations_done)` runs after every step (periodic checkpoints).
    `write_metrics(record)` gets a training_record with every log line (every `print_freq` iterations); with
    `iterations_after` (of the epochs to come) the log lines give the whole run's ETA.
    When any rank has received a stop signal, every rank finishes the same iteration and raises
    TrainingStopped; a non-finite loss raises NonFiniteLossError before the optimizer step.
    """
    model.train()
    metric_logger = utils.MetricLogger(delimiter="  ")
    metric_logger.add_meter("lr", utils.SmoothedValue(window_size=1, fmt="{value:.6f}"))
    iters_per_epoch = first_iteration + len(data_loader)
    lr_scheduler = lr_scheduler or WarmupLRScheduler(optimizer, iters_per_epoch)

    on_print = _record_writer(write_metrics, epoch, iters_per_epoch)
    batches = metric_logger.log_every(data_loader, print_freq, f"Epoch: [{epoch}]", start=first_iteration,
                                      on_print=on_print, iterations_after=iterations_after)  # fmt: skip
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


# ----------------------------------------------------------------------------- the epochs of a run


EvaluatorFactory = Callable[[torch.nn.Module, Iterable], Evaluator]  # (model, loader) -> a fresh evaluator


def coco_evaluators(backend: str = DEFAULT_BACKEND) -> EvaluatorFactory:
    """The default EvaluatorFactory: a CocoEvaluator per pass, scoring with `backend`."""
    return lambda model, data_loader: coco_evaluator_for(data_loader, model, backend)


@dataclass
class Run:
    """What a training run holds (train.py builds it), for the epochs and for their checkpoints."""

    args: argparse.Namespace  # train.py's flags (with a resumed run's recorded ones); never changed
    state: ckpt.RunState  # what its checkpoints hold: the model, optimizer, schedule, sampler...
    model: torch.nn.Module  # wrapped in DistributedDataParallel when distributed
    batch_sampler: ResumableBatchSampler
    data_loader: Iterable
    data_loader_test: Iterable
    device: torch.device
    make_evaluator: EvaluatorFactory
    start_epoch: int = 0
    first_iteration: int = 0  # the iterations of start_epoch already done (a resumed mid-epoch checkpoint)
    unevaluated_epoch: int | None = None  # a resumed finished epoch whose evaluation did not finish

    @property
    def model_without_ddp(self) -> torch.nn.Module:
        return self.state.model

    def save(self, epoch: int, iteration: int | None = None, evaluated: bool = True) -> Path | None:
        """checkpoint.save_run into --output-dir (none without one); call it on every rank."""
        if not self.args.output_dir:
            return None
        keep = self.args.keep_checkpoints
        return ckpt.save_run(self.state, self.args.output_dir, epoch, iteration, evaluated, keep)


def train_epochs(run: Run) -> int:
    """The epochs from run.start_epoch (the first resumed after run.first_iteration iterations): train, save,
    evaluate. A stop signal saves where the run is and ends it. Returns the exit status: 0, or 128 + the signal."""
    args, batch_sampler, device = run.args, run.batch_sampler, run.device
    print("Start training")
    start_time = time.time()
    iters_per_epoch = len(batch_sampler.batch_sampler)
    first_step = run.start_epoch * iters_per_epoch + run.first_iteration
    metrics = metrics_log.MetricsWriter(args.output_dir, args.tensorboard, first_step=first_step)
    evaluated, path = [], None
    with catching_stop_signals() as stop, metrics:
        if run.unevaluated_epoch is not None:
            epoch = run.unevaluated_epoch
            print(f"Evaluating epoch {epoch} first: the run stopped before its evaluation finished")
            evaluated.append((epoch, _evaluate_epoch(run, metrics, epoch, iters_per_epoch)))
            path = Path(args.output_dir) / ckpt.CHECKPOINT_FILE if args.output_dir else None
        for epoch in range(run.start_epoch, args.epochs):
            first = run.first_iteration if epoch == run.start_epoch else 0
            run.state.train_sampler.set_epoch(epoch)
            batch_sampler.set_position(epoch, first)
            after_step = _periodic_saver(args, run.save, epoch, iters_per_epoch)
            try:
                train_one_epoch(
                    run.model, run.state.optimizer, run.data_loader, device, epoch, args.print_freq, run.state.scaler,
                    lr_scheduler=run.state.lr_scheduler, first_iteration=first, clip_grad_norm=args.clip_grad_norm,
                    stop=stop, after_step=after_step, write_metrics=metrics.write,
                    iterations_after=(args.epochs - epoch - 1) * iters_per_epoch,
                )  # fmt: skip
            except TrainingStopped as stopped:
                path = run.save(epoch, stopped.iteration)
                where = f"at epoch {epoch}, iteration {stopped.iteration}/{iters_per_epoch}"
                return _report_stop(path, stop.signum, where)
            run.state.lr_scheduler.step()
            due = (epoch + 1) % args.eval_every == 0 or epoch == args.epochs - 1
            # Saved once, before a due evaluation, as not evaluated: the evaluation's record in metrics.jsonl marks it
            # done (Checkpoint.unevaluated_epoch), and a run killed during it evaluates it first when resumed.
            path = run.save(epoch, evaluated=not due)
            if due:
                evaluated.append((epoch, _evaluate_epoch(run, metrics, epoch, iters_per_epoch)))
            if distributed.any_rank(stop.received):
                return _report_stop(path, stop.signum, f"after epoch {epoch}")
    print(f"Training time {time.strftime('%H:%M:%S', time.gmtime(time.time() - start_time))}")
    write_report(args)
    if evaluated:
        print(_summary(evaluated, path, args))
    return 0


def _evaluate_epoch(run: Run, metrics: metrics_log.MetricsWriter, epoch: int, iters_per_epoch: int) -> dict:
    """Evaluate the model after `epoch`: the AP tables, metrics.jsonl's eval record, --save-predictions."""
    evaluator = run.make_evaluator(run.model_without_ddp, run.data_loader_test)
    evaluator = evaluate(run.model_without_ddp, run.data_loader_test, run.device, evaluator=evaluator)
    metrics.write(evaluation_record(evaluator.metrics, epoch, global_iteration=(epoch + 1) * iters_per_epoch))
    save_predictions(run.args, evaluator, f"predictions_{epoch}.json")
    if epoch == run.args.epochs - 1 and reporting_due(run.args):
        write_analysis(metrics, evaluator, run.data_loader_test, "eval", epoch)
    return evaluator.metrics


def reporting_due(args: argparse.Namespace) -> bool:
    """Whether this process analyses the last evaluation and writes report.html: rank 0, with --output-dir, without
    --no-report."""
    return bool(args.output_dir) and not args.no_report and distributed.is_main_process()


def write_analysis(metrics: metrics_log.MetricsWriter, evaluator: Evaluator, data_loader: Iterable, of: str,
                   epoch: int | None) -> None:  # fmt: skip
    """The analysis record of an evaluation, into metrics.jsonl (it costs about two more COCO evaluations)."""
    start = time.time()
    record = analysis_record(evaluator, data_loader, of, epoch)
    if record is not None:
        metrics.write(record)
        print(f"Error analysis: {time.time() - start:.1f} s")


def record_run(args: argparse.Namespace, recorded_flags: dict[str, Any], command: list[str] | None) -> None:
    """The run record of this invocation, into --output-dir's metrics.jsonl (rank 0)."""
    with metrics_log.MetricsWriter(args.output_dir) as metrics:
        metrics.write(run_record(recorded_flags, command))


def finish_test_only(args: argparse.Namespace, evaluator: Evaluator, data_loader: Iterable, weights: str | None,
                     epoch: int | None) -> None:  # fmt: skip
    """After a --test-only evaluation: its test record and analysis record into metrics.jsonl, then report.html."""
    with metrics_log.MetricsWriter(args.output_dir) as metrics:
        metrics.write(test_record(evaluator.metrics, weights, epoch))
        if reporting_due(args):
            write_analysis(metrics, evaluator, data_loader, "test", epoch)
    write_report(args)


def write_report(args: argparse.Namespace) -> None:
    """report.html in --output-dir, from what the run recorded (reporting.write_report); a failure to write it is
    said in one line and never fails the run, whose checkpoints and metrics are written already."""
    if not reporting_due(args):
        return
    try:
        print(f"Report: {reporting.write_report(Path(args.output_dir))}")
    except Exception as e:  # noqa: BLE001 - the run's work is saved: a page that fails must not fail the run
        print(f"Warning: report.html not written ({errors.short_reason(e)}); python report.py {args.output_dir} "
              "writes it again")  # fmt: skip


def _summary(evaluated: list[tuple[int, dict]], latest: Path | None, args: argparse.Namespace) -> str:
    """One line at the end of a run: each IoU type's last and best AP (in this run) and the checkpoints."""
    parts = []
    last = evaluated[-1][1]
    for group, numbers in last.items():
        name = _headline(numbers)
        if name is None:
            continue
        best_epoch, best = max(((e, m[group][name]) for e, m in evaluated if group in m), key=lambda pair: pair[1])
        parts.append(f"{group} {name} {numbers[name]:.3f} (best {best:.3f}, epoch {best_epoch})")
    where = f"; checkpoints in {args.output_dir}: checkpoint.pth, model_{evaluated[-1][0]}.pth" if latest else ""
    return f"Done after epoch {evaluated[-1][0]}: {', '.join(parts)}{where}"


def _headline(numbers: Any) -> str | None:
    """The number an evaluator's group of numbers is summed up by: its "AP" (COCO's), else its first number; None
    for a group that holds no numbers of its own (per_category's tables)."""
    if not isinstance(numbers, dict):
        return None
    if "AP" in numbers:
        return "AP"
    return next((name for name, value in numbers.items() if isinstance(value, int | float)), None)


def _periodic_saver(args: argparse.Namespace, save, epoch: int, iters_per_epoch: int):
    """after_step for train_one_epoch: a mid-epoch checkpoint every --checkpoint-every iterations."""
    if not args.checkpoint_every or not args.output_dir:
        return None

    def after_step(done: int) -> None:
        if done % args.checkpoint_every == 0 and done < iters_per_epoch:
            save(epoch, done)

    return after_step


def save_predictions(args: argparse.Namespace, evaluator: Evaluator, name: str) -> None:
    """--save-predictions: the evaluation's detections as a COCO results file in --output-dir (rank 0 writes)."""
    if args.save_predictions and args.output_dir and distributed.is_main_process():
        path = files.save_json(evaluator.detections(), Path(args.output_dir) / name)
        print(f"Saved the detections to {path}")


def _report_stop(path: Path | None, own_signum: int | None, where: str) -> int:
    """Say where training stopped and how to go on; the exit status is 128 + the signal (SIGTERM's when another rank
    got it)."""
    name = signal.Signals(own_signum).name if own_signum else "a signal to another rank"
    if path is None:
        print(f"Stopped by {name} {where}; nothing saved (no --output-dir)")
    else:
        print(f"Stopped by {name} {where}; saved {path}. To go on, run the same command with --auto-resume "
              f"(or --resume {path})")  # fmt: skip
    return 128 + (own_signum or signal.SIGTERM)

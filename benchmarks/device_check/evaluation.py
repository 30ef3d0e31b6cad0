"""The evaluation section: model and post-processing (mask pasting and RLE encoding on the device) time per image;
the 12+12 numbers of the same checkpoint on the same images on CUDA and on the CPU; the same raw outputs pasted on
CUDA and on the CPU."""

import argparse
import contextlib
import io
import time
from pathlib import Path
from typing import Any

import torch

import checkpoint as ckpt
import models
from coco_utils import get_coco
from device_check.frame import SKIPPED_NO_CUDA, Context, Section, failure, sync, time_call
from device_check.trainer import build_model
from engine import coco_evaluator_for, evaluate
from samplers import build_data_loaders
from transforms import get_transform


class TimedEvaluator:
    """An Evaluator around CocoEvaluator that times update() (mask pasting and RLE encoding on the device) and
    summarize() (scoring), and keeps a CPU copy of each prediction to evaluate again elsewhere."""

    def __init__(self, inner, device: torch.device, keep_copies: bool):
        self.inner, self.device, self.keep_copies = inner, device, keep_copies
        self.update_seconds, self.summarize_seconds, self.images, self.copies = 0.0, 0.0, 0, {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def update(self, predictions: dict) -> None:
        self.update_seconds += time_call(lambda: self.inner.update(predictions), self.device)[0]
        self.images += len(predictions)
        if self.keep_copies:
            for image_id, prediction in predictions.items():
                self.copies[image_id] = {
                    k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in prediction.items()
                }

    def synchronize_between_processes(self) -> None:
        self.inner.synchronize_between_processes()

    def summarize(self) -> dict:
        start = time.perf_counter()
        metrics = self.inner.summarize()
        self.summarize_seconds = time.perf_counter() - start
        return metrics


@contextlib.contextmanager
def _model_timer(model: torch.nn.Module, device: torch.device):
    """Time every forward of `model` (synchronized before and after), into the list the block gets."""
    times, starts = [], []

    def before(module, inputs):
        sync(device)
        starts.append(time.perf_counter())

    def after(module, inputs, output):
        sync(device)
        times.append(time.perf_counter() - starts.pop())

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()


def _numbers(metrics: dict) -> dict[str, float]:
    """The 12+12 numbers by 'iou_type name'."""
    return {f"{t} {name}": v for t, table in metrics.items() if t != "per_category" for name, v in table.items()}


def _evaluate_on(model, loader, device: torch.device) -> tuple[dict, TimedEvaluator, list]:
    model.to(device)
    timed = TimedEvaluator(coco_evaluator_for(loader, model), device, keep_copies=device.type == "cuda")
    with _model_timer(model, device) as model_times, contextlib.redirect_stdout(io.StringIO()):
        evaluate(model, loader, device, evaluator=timed)
    return timed.inner.metrics, timed, model_times


def _eval_model(ctx: Context) -> tuple[torch.nn.Module, Any, str]:
    """The checkpoint train.py wrote in the torchrun section (else an untrained model from the backbone file)."""
    path = ctx.results.get("checkpoint")
    if path is not None and Path(path).is_file():
        model, classes = models.model_from_checkpoint(ckpt.read_model_file(path, "--resume"), str(path), "--resume")
        return model, classes.label_to_category_id, f"train.py's checkpoint {Path(path).name} (torchrun section)"
    dataset = get_coco(ctx.data_root, "train", None, with_masks=False)
    model = build_model(ctx, dataset.classes.num_classes)
    return model, dataset.label_to_category_id, "an untrained model (the torchrun section left no checkpoint)"


def section_evaluation(ctx: Context) -> Section:
    section = Section("evaluation", "case | value | expected | agree?")
    model, label_to_category_id, what = _eval_model(ctx)
    dataset = get_coco(
        ctx.data_root, "val", get_transform(False), with_masks=False, label_to_category_id=label_to_category_id
    )
    runs = _evaluate_each(ctx, section, model, dataset)
    if not ctx.cuda:
        for case, metric in (
            ("the same checkpoint on CUDA and on the CPU: 12+12 numbers", "cuda_vs_cpu"),
            ("the same raw outputs, masks pasted on CUDA and on the CPU", "paste_cuda_vs_cpu"),
        ):
            section.add([case, SKIPPED_NO_CUDA], status=SKIPPED_NO_CUDA, metric=metric)  # fmt: skip
    elif "cuda" in runs:
        _compare_devices(section, model, runs)
    section.notes.append(
        f"{what}, on the {len(dataset)} validation images, with engine.evaluate and the default evaluator "
        "(faster-coco-eval). Model time includes the model's own post-processing (boxes, NMS); post-processing is "
        "CocoEvaluator.update: the 28x28 masks pasted and RLE-encoded on the device they are on."
    )
    return section


def _evaluate_each(ctx: Context, section: Section, model, dataset) -> dict[str, tuple[dict, TimedEvaluator, Any]]:
    """The model evaluated on the device and, on a GPU, on the CPU too: their rows; by device type, the 12+12
    numbers, the timed evaluator and the loader."""
    args = argparse.Namespace(workers=2 if ctx.dry_run else 4)
    runs = {}
    for device in [ctx.device, torch.device("cpu")] if ctx.cuda else [torch.device("cpu")]:
        on = device.type
        _, _, _, loader = build_data_loaders(args, None, dataset, device, 0)
        try:
            metrics, timed, model_times = _evaluate_on(model, loader, device)
        except Exception as e:  # noqa: BLE001
            section.add([f"evaluation on {on}", failure(e)], device=on, status=failure(e))
            continue
        runs[on] = (_numbers(metrics), timed, loader)
        n = max(timed.images, 1)
        model_ms, post_ms = 1000 * sum(model_times) / n, 1000 * timed.update_seconds / n
        where = ", on the GPU" if on == "cuda" else ""
        section.add([f"{on}: model time per image (ms)", model_ms], device=on, metric="model_ms", value=model_ms)
        section.add([f"{on}: post-processing per image: masks pasted and RLE-encoded{where} (ms)", post_ms],
                    device=on, metric="postprocess_ms", value=post_ms)  # fmt: skip
        section.add([f"{on}: scoring the {n} images (s)", timed.summarize_seconds], device=on, metric="summarize_s",
                    value=timed.summarize_seconds)  # fmt: skip
        numbers = runs[on][0]
        ap = f"{numbers['bbox AP']:.4f} / {numbers['segm AP']:.4f}"
        section.add([f"{on}: bbox AP / segm AP", ap], device=on, metric="ap", numbers=numbers)
    return runs


def _compare_devices(section: Section, model, runs: dict[str, tuple[dict, TimedEvaluator, Any]]) -> None:
    """CUDA's numbers against the CPU's; and the CUDA model's very raw outputs, their masks pasted and encoded on the
    CPU instead."""
    cuda_numbers, cuda_timed, loader = runs["cuda"]
    if "cpu" in runs:
        cpu_numbers = runs["cpu"][0]
        difference = max(abs(cuda_numbers[k] - cpu_numbers[k]) for k in cuda_numbers)
        section.add(["model and masks on CUDA vs on the CPU: largest difference of the 12+12 numbers",
                     f"{difference:.2g}", "<= 0.001", difference <= 1e-3], metric="cuda_vs_cpu",
                    max_difference=difference, cpu=cpu_numbers, cuda=cuda_numbers)  # fmt: skip
    cpu_paste = coco_evaluator_for(loader, model)
    cpu_paste.update(cuda_timed.copies)
    with contextlib.redirect_stdout(io.StringIO()):
        cpu_paste.synchronize_between_processes()
        cpu_paste.summarize()
    paste_numbers = _numbers(cpu_paste.metrics)
    difference = max(abs(cuda_numbers[k] - paste_numbers[k]) for k in cuda_numbers)
    gpu_detections, cpu_detections = cuda_timed.inner.detections(), cpu_paste.detections()
    same = sum(a.get("segmentation") == b.get("segmentation") for a, b in zip(gpu_detections, cpu_detections))
    total = max(len(gpu_detections), len(cpu_detections))
    section.add(["the same raw outputs, masks pasted on CUDA vs on the CPU: largest difference of the 12+12",
                 f"{difference:.2g}", "0 (a pixel at 0.5 +- 1e-7 may flip)", difference <= 1e-4],
                metric="paste_cuda_vs_cpu", max_difference=difference, cpu=paste_numbers)  # fmt: skip
    section.add(
        [
            "masks identical, pasted on CUDA vs on the CPU",
            f"{same} of {total}",
            "all but rounding at 0.5",
            same >= total - max(1, total // 1000),
        ],
        metric="masks_identical",
        same=same,
        total=total,
    )

"""Benchmark: COCO evaluation, the torchvision reference's CocoEvaluator against ours.

The baseline is the reference's path, written out in reference.py (ReferenceEvaluator): per update, a results
dict per detection (each mask thresholded and RLE-encoded on its own), pycocotools' loadRes and
evaluate() for those images; at the end the per-image evaluations merged, accumulated, summarized.
For the whole way from raw outputs, torchvision's paste_masks_in_image comes first.

Cases (the same inputs for both, image by image, in this process):
- bbox, reference inputs: boxes, scores, labels per image.
- segm, reference inputs: the full-size mask probabilities the reference gets from the model.
- whole way: Mask R-CNN's raw outputs (28x28 masks, boxes) to the 12 bbox and 12 segm numbers:
  baseline = paste_masks_in_image + reference bbox + reference segm; ours = CocoEvaluator with the
  raw masks (pasted and encoded box by box), with each backend.
Every case checks that ours gives the baseline's 12 numbers exactly.

    python benchmarks/bench_eval.py                                   # 100 images x 100 detections
    python benchmarks/bench_eval.py --images 1000 --detections 100    # the issue's size
"""

import argparse
import contextlib
import io
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision.models.detection.roi_heads import paste_masks_in_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_output  # noqa: E402
import detections  # noqa: E402
from reference import ReferenceEvaluator  # noqa: E402

import coco_eval  # noqa: E402
from coco_eval import coco_index  # noqa: E402

# pycocotools' encoder reads torch tensors through numpy's deprecated __array__ path: not ours to fix
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword")


def _reference_paste(output: dict) -> torch.Tensor:
    """The reference model pastes on its device; its evaluator gets the full-size masks on the CPU."""
    return paste_masks_in_image(output["raw_masks"], output["boxes"], output["image_size"]).cpu()


def _finish(evaluator) -> dict[str, np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.synchronize_between_processes()
        evaluator.accumulate()
        evaluator.summarize()
    return {t: np.array(e.stats) for t, e in evaluator.coco_eval.items()}


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """The command line: bench_output's common flags (seed, device, ...) plus the number of images and detections."""
    parser = bench_output.parser(
        __doc__, device_help="where the model's outputs are (cpu or cuda): pasting happens there"
    )
    parser.add_argument("--images", type=int, default=100, help="images evaluated")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    return bench_output.setup(parser, argv)


def _evaluators(gt: COCO) -> dict[str, ReferenceEvaluator | coco_eval.CocoEvaluator]:
    """Every evaluator timed, by the name its seconds are kept under."""
    return {
        "reference bbox": ReferenceEvaluator(gt, ["bbox"]),
        "reference segm": ReferenceEvaluator(gt, ["segm"]),
        "ours bbox": coco_eval.CocoEvaluator(gt, ["bbox"]),
        "ours segm": coco_eval.CocoEvaluator(gt, ["segm"]),
        "ours whole way": coco_eval.CocoEvaluator(gt, ["bbox", "segm"]),
        "ours whole way, pycocotools": coco_eval.CocoEvaluator(gt, ["bbox", "segm"], backend="pycocotools"),
    }


def _timed(seconds: dict[str, float], name: str, work: Callable, *arguments):
    """`work(*arguments)`, its wall time added to `seconds[name]`."""
    start = time.perf_counter()
    result = work(*arguments)
    seconds[name] += time.perf_counter() - start
    return result


def _evaluate(
    outputs: dict, evaluators: dict, device: torch.device
) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """Every evaluator fed image by image, then finished: the seconds each took and the 12 numbers it gives."""
    seconds: dict[str, float] = defaultdict(float)
    for image_id, output in outputs.items():
        raw = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in output.items()}
        full = _timed(seconds, "paste", _reference_paste, raw)
        reference_input = {
            image_id: {"boxes": output["boxes"], "scores": output["scores"], "labels": output["labels"], "masks": full}
        }
        for name in ("reference bbox", "reference segm", "ours bbox", "ours segm"):
            _timed(seconds, name, evaluators[name].update, reference_input)
        for name in ("ours whole way", "ours whole way, pycocotools"):
            _timed(seconds, name, evaluators[name].update, {image_id: raw})
    stats = {name: _timed(seconds, name, _finish, evaluator) for name, evaluator in evaluators.items()}
    return seconds, stats


def _print_timings(args: argparse.Namespace, seconds: dict[str, float]) -> None:
    """The table of total seconds, baseline against ours, per case."""
    baseline_whole_way = seconds["paste"] + seconds["reference bbox"] + seconds["reference segm"]
    rows = [
        ("bbox, reference inputs", seconds["reference bbox"], seconds["ours bbox"], 5),
        ("segm, reference inputs (full-size mask probabilities)", seconds["reference segm"], seconds["ours segm"], 1),
        ("whole way: raw outputs to 12 bbox + 12 segm numbers", baseline_whole_way, seconds["ours whole way"], 10),
        (
            "whole way, ours with --eval-backend pycocotools",
            baseline_whole_way,
            seconds["ours whole way, pycocotools"],
            None,
        ),
    ]
    print(f"\nTotal seconds for {args.images} images x {args.detections} detections (ratio: baseline / ours):\n")
    print(bench_output.table(rows, unit="s"))
    print(f"\n(torchvision's paste_masks_in_image alone: {seconds['paste']:.3g} s)")


def _verdict(difference: float) -> str:
    """How far ours is from the baseline's numbers, in words."""
    if difference == 0:
        return "identical"
    if difference <= 1e-12:  # the tests' tolerance: the last bits of a mean of precisions
        return f"equal to 1e-12 (largest difference {difference:.1g})"
    return f"DIFFER by up to {difference:.3g}"


def _print_checks(stats: dict[str, dict[str, np.ndarray]]) -> None:
    """Ours against the baseline's 12 bbox and 12 segm numbers, case by case, then the baseline's APs."""
    reference = {"bbox": stats["reference bbox"]["bbox"], "segm": stats["reference segm"]["segm"]}
    checks = [
        ("bbox, reference inputs", stats["ours bbox"]["bbox"], reference["bbox"]),
        ("segm, reference inputs", stats["ours segm"]["segm"], reference["segm"]),
        ("whole way bbox", stats["ours whole way"]["bbox"], reference["bbox"]),
        ("whole way segm", stats["ours whole way"]["segm"], reference["segm"]),
        ("pycocotools backend bbox", stats["ours whole way, pycocotools"]["bbox"], reference["bbox"]),
        ("pycocotools backend segm", stats["ours whole way, pycocotools"]["segm"], reference["segm"]),
    ]
    print("\nThe 12 numbers, ours against the baseline's:")
    for case, ours, expected in checks:
        print(f"- {case}: {_verdict(np.abs(ours - expected).max())}")
    print(f"- segm AP (baseline): {reference['segm'][0]:.6f}, bbox AP: {reference['bbox'][0]:.6f}")


def main(argv: list[str] | None = None) -> None:
    args, device = _parse_args(argv)
    data, instances = detections.ground_truth(args.images, seed=args.seed)
    outputs = detections.raw_detections(data, instances, per_image=args.detections, seed=args.seed)
    gt = coco_index(data)
    print(
        f"{args.images} images, {len(data['annotations'])} ground-truth instances, "
        f"{args.detections} detections per image"
    )
    seconds, stats = _evaluate(outputs, _evaluators(gt), device)
    _print_timings(args, seconds)
    _print_checks(stats)


if __name__ == "__main__":
    main()

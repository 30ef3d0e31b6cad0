"""A whole evaluation pass per image, upstream's path against ours, side by side in one process (issue #21).

Both evaluate the same model (the same weights) on the same images, each through its own data pipeline:

- upstream: the torchvision reference's evaluate() (reference.evaluate: one torch thread, as the reference sets),
  its validation set as --use-v2 builds it (torchvision's CocoDetection wrapped for transforms v2, float images made
  in the worker), torchvision's model pasting the masks (paste_masks_in_image), the reference's CocoEvaluator;
- ours: engine.evaluate over coco_utils.get_coco's validation set and samplers.build_data_loaders' loader, the
  model's masks unpasted, pasted and RLE-encoded by masks.paste_masks_to_rles, coco_eval.CocoEvaluator.

The process's torch threads are set to each count of --threads before both passes (upstream then sets one itself; a
third row, for information, is upstream with that torch.set_num_threads(1) lifted).
The paths take turns, --repeats passes each, and the table gives the median seconds per image, broken down into:
model (the forward pass, less the mask pasting inside it), post-processing (mask pasting and RLE encoding), evaluator
(its update, merge, accumulate and summarize, less the RLE encoding inside upstream's update) and data (the rest:
waiting for the loader, moving images to the device). Every pass's 12 bbox and 12 segm numbers must equal upstream's
to the last bit.

The model is the demo's (maskrcnn_resnet50_fpn at min/max size 128, the demo's --model-kwargs) with --checkpoint's
weights (default output/demo/checkpoint.pth, `make demo`'s; where it is missing, random heads on the calibrated
stand-in ResNet-50). The images are --data-path's val2017 (default data/synthetic, `make data`'s; written to a
temporary folder where it is missing).

    python benchmarks/bench_eval_vs_upstream.py                         # 48 images, 1 and 2 threads, 3 passes each
    python benchmarks/bench_eval_vs_upstream.py --threads 2 --repeats 1 --images 8   # a quick look
"""

import argparse
import contextlib
import functools
import inspect
import io
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_output  # noqa: E402
import demo_setup  # noqa: E402
import reference  # noqa: E402

import coco_eval  # noqa: E402
import engine  # noqa: E402
import samplers  # noqa: E402

GOAL = 0.8  # ours at most 0.8x upstream's seconds per image, at every thread count
PARTS = ("model", "post-processing", "evaluator", "data")
UNLIMITED = "upstream without its set_num_threads(1)"  # information: what the reference's one thread costs it


class Stopwatch:
    """Seconds by name, added up by wrapping functions where they are looked up (module or class attributes)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def timing(self, owner: object, attribute: str, name: str | Callable) -> Iterator[None]:
        """While the block runs, `owner.attribute` adds its time to `name` (or to `name(*arguments)`)."""
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*arguments, **keywords):
            start = time.perf_counter()
            try:
                return original(*arguments, **keywords)
            finally:
                key = name(*arguments, **keywords) if callable(name) else name
                self.seconds[key] += time.perf_counter() - start

        static = isinstance(inspect.getattr_static(owner, attribute), staticmethod)
        setattr(owner, attribute, staticmethod(timed) if static else timed)
        try:
            yield
        finally:
            setattr(owner, attribute, staticmethod(original) if static else original)

    @contextlib.contextmanager
    def forward(self, model: torch.nn.Module) -> Iterator[None]:
        """The model's forward passes, added up under "forward"."""
        started = []

        def finished(*_) -> None:
            self.seconds["forward"] += time.perf_counter() - started.pop()

        pre = model.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
        post = model.register_forward_hook(finished)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def _evaluator_methods(watch: Stopwatch, evaluator_class: type) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for method in ("update", "synchronize_between_processes", "accumulate", "summarize"):
        if hasattr(evaluator_class, method):
            stack.enter_context(watch.timing(evaluator_class, method, "evaluator calls"))
    return stack


def _upstream_pass(
    model: torch.nn.Module, dataset, workers: int, device: torch.device, one_thread: bool = True
) -> tuple[dict, dict]:
    """One reference.evaluate pass: its parts' seconds and its numbers."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        sampler=torch.utils.data.SequentialSampler(dataset),
        num_workers=workers,
        collate_fn=reference.collate,
    )  # fmt: skip  (the reference's data_loader_test)
    watch = Stopwatch()
    transform_module = torchvision.models.detection.transform
    results_kind = {"segm": "rle"}  # the segm results are the masks thresholded and RLE-encoded, one by one
    with (
        watch.forward(model),
        watch.timing(transform_module, "paste_masks_in_image", "paste"),
        _evaluator_methods(watch, reference.ReferenceEvaluator),
        watch.timing(
            reference.ReferenceEvaluator, "_results", lambda _, iou_type: results_kind.get(iou_type, "results")
        ),
    ):
        start = time.perf_counter()
        evaluator = reference.evaluate(model, loader, device, one_thread)
        total = time.perf_counter() - start
    stats = {t: np.array(e.stats) for t, e in evaluator.coco_eval.items()}
    return _parts(watch.seconds, total, pasting=watch.seconds["paste"], encoding=watch.seconds["rle"]), stats


def _our_pass(model: torch.nn.Module, dataset, workers: int, device: torch.device) -> tuple[dict, dict]:
    """One engine.evaluate pass: its parts' seconds and its numbers."""
    loader = samplers.build_data_loaders(argparse.Namespace(workers=workers), None, dataset, device, seed=0)[3]
    watch = Stopwatch()
    with (
        watch.forward(model),
        watch.timing(coco_eval, "paste_masks_to_rles", "paste and encode"),
        _evaluator_methods(watch, coco_eval.CocoEvaluator),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        start = time.perf_counter()
        evaluator = engine.evaluate(model, loader, device, print_freq=10**9)
        total = time.perf_counter() - start
    stats = {t: np.array(e.stats) for t, e in evaluator.coco_eval.items()}
    return _parts(watch.seconds, total, pasting=0.0, encoding=watch.seconds["paste and encode"]), stats


def _parts(seconds: dict[str, float], total: float, pasting: float, encoding: float) -> dict[str, float]:
    """The four parts and the total; pasting runs inside the forward pass, encoding inside the evaluator's calls."""
    parts = {
        "model": seconds["forward"] - pasting,
        "post-processing": pasting + encoding,
        "evaluator": seconds["evaluator calls"] - encoding,
    }
    parts["data"] = total - seconds["forward"] - seconds["evaluator calls"]
    parts["total"] = total
    return parts


def _same_numbers(stats: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> str:
    gap = max(np.abs(stats[t] - expected[t]).max() for t in expected)
    return "identical" if gap == 0 else f"DIFFER by up to {gap:.3g}"


def _race(paths: dict[str, Callable], threads: int, repeats: int) -> tuple[dict, dict, list[str]]:
    """Each path `repeats` times, taking turns (one warm-up pass each first): median parts, numbers, checks."""
    torch.set_num_threads(threads)
    names = list(paths)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    stats = {}
    for name in names:
        _, stats[name] = paths[name]()  # warm-up: oneDNN primitives, first-call allocations
    checks = []
    for r, name in bench_output.in_turns(names, repeats):
        torch.set_num_threads(threads)
        parts, numbers = paths[name]()
        runs[name].append(parts)
        checks.append(f"{name} pass {r + 1}: {_same_numbers(numbers, stats['upstream'])}")
    medians = {name: {k: statistics.median(p[k] for p in runs[name]) for k in runs[name][0]} for name in names}
    return medians, stats, checks


def _table(rows: list[tuple[int, dict, int]]) -> str:
    """Seconds per image by part, upstream's and ours, and the ratio of the totals."""
    head = "| threads | path | " + " | ".join(PARTS) + " | total (s/image) | ours / upstream | goal | met? |"
    lines = [head, "|" + "---|" * (len(PARTS) + 7)]
    for threads, medians, images in rows:
        ratio = medians["ours"]["total"] / medians["upstream"]["total"]
        for name in ("upstream", "ours", UNLIMITED):
            parts = " | ".join(f"{medians[name][p] / images:.4f}" for p in PARTS)
            tail = f"{ratio:.2f} | <= {GOAL} | {'yes' if ratio <= GOAL else 'NO'}" if name == "ours" else " | |"
            if name == UNLIMITED:
                tail = f"({medians['ours']['total'] / medians[name]['total']:.2f}) | | "
            lines.append(f"| {threads} | {name} | {parts} | {medians[name]['total'] / images:.4f} | {tail} |")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = demo_setup.parser(__doc__, repeats=3)
    parser.add_argument("-j", "--workers", type=int, default=1, help="data loading workers (the demo's -j 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        root = demo_setup.demo_split(args.data_path, folder)
        img_folder, ann_file = root / "val2017", root / "annotations" / "instances_val2017.json"
        upstream_data = reference.validation_dataset(img_folder, ann_file)
        our_data = demo_setup.validation_set(root, args.images)
        if args.images is not None:
            upstream_data = torch.utils.data.Subset(upstream_data, range(args.images))
            upstream_data.coco = upstream_data.dataset.coco  # what reference.evaluate reads
        images = len(our_data)
        model, weights_note = demo_setup.demo_model(args.checkpoint)
        paths = {
            "upstream": lambda: _upstream_pass(model, upstream_data, args.workers, device),
            "ours": lambda: _our_pass(model, our_data, args.workers, device),
            UNLIMITED: lambda: _upstream_pass(model, upstream_data, args.workers, device, one_thread=False),
        }
        print(f"Machine: {bench_output.machine(device)}")
        print(f"{images} images of {root}, -j {args.workers}, {args.repeats} passes each; model: {weights_note}\n")
        rows, notes = [], []
        for threads in args.threads:
            medians, stats, checks = _race(paths, threads, args.repeats)
            rows.append((threads, medians, images))
            notes += [f"- {threads} threads, {check}" for check in checks]
            box, mask = stats["upstream"]["bbox"][0], stats["upstream"]["segm"][0]
            notes.append(f"- {threads} threads: box AP {box:.6f}, mask AP {mask:.6f}")
    print(_table(rows))
    print("\nThe 12 bbox + 12 segm numbers of every timed pass against upstream's warm-up pass:")
    print("\n".join(notes))


if __name__ == "__main__":
    main()

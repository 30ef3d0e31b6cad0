"""Speed options for the CPU (issue #21), each measured against the default in one run, on the demo's model and data.

- inference: a whole engine.evaluate pass over the demo's validation images (seconds per image, the median of
  --repeats passes taken in turns after one untimed pass, whose extra time is the compile time where there is one)
  and the change of its 12 bbox + 12 segm numbers against the default's (the largest absolute difference; box and
  mask AP). Options: bfloat16 autocast (torch.autocast("cpu", torch.bfloat16), the matrix multiplies and
  convolutions in bf16), channels-last memory format (the model's convolution weights, so that oneDNN keeps its
  activations NHWC), both, and torch.compile of the backbone (inductor, its C++ kernels).
- training: seconds per iteration of a forward/backward/AdamW step over the same in-memory batches (the demo's: 4
  images of 128 px, augmented once), the demo's model from scratch (trainable BatchNorm): the default, --amp on the
  CPU (bf16 autocast and GradScaler, as engine.train_one_epoch runs it), channels-last, torch.compile of the backbone.
  What an option does to the trained model's AP takes a training run of its own (README of benchmarks/).
- threads and workers: the evaluation pass at each torch thread count with 0, 1 and 2 data loading workers.

    python benchmarks/bench_cpu_options.py                 # everything, 1 and 2 threads (about 15 minutes here)
    python benchmarks/bench_cpu_options.py --parts training --threads 2
"""

import argparse
import contextlib
import copy
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_output  # noqa: E402
import demo_setup  # noqa: E402

import coco_utils  # noqa: E402
import engine  # noqa: E402
import samplers  # noqa: E402
import transforms  # noqa: E402
import utils  # noqa: E402
from images import images_to_device  # noqa: E402


@dataclass(frozen=True)
class Option:
    bf16: bool = False
    channels_last: bool = False
    compile_backbone: bool = False

    def apply(self, model: torch.nn.Module, inference: bool = False) -> torch.nn.Module:
        """A copy of `model` with the option; for `inference`, a bf16 option runs the model's call under autocast
        and gives its floating outputs back in fp32, as the evaluator takes them."""
        model = copy.deepcopy(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile_backbone:
            model.backbone = torch.compile(model.backbone)
        if self.bf16 and inference:
            model.forward = _in_bf16(model.forward)
        return model

    def context(self) -> contextlib.AbstractContextManager:
        """What a training step runs under (engine.train_one_epoch's autocast with --amp)."""
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def _fp32(value):
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value


def _in_bf16(forward: Callable) -> Callable:
    def run(*arguments, **keywords) -> list[dict]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = forward(*arguments, **keywords)
        return [{k: _fp32(v) for k, v in output.items()} for output in outputs]

    return run


DEFAULT = "default (fp32, contiguous)"
INFERENCE_OPTIONS = {
    DEFAULT: Option(),
    "bf16 autocast": Option(bf16=True),
    "channels-last": Option(channels_last=True),
    "channels-last + bf16 autocast": Option(bf16=True, channels_last=True),
    "torch.compile(backbone)": Option(compile_backbone=True),
}
TRAINING_OPTIONS = {
    DEFAULT: Option(),
    "--amp: bf16 autocast + GradScaler": Option(bf16=True),
    "channels-last": Option(channels_last=True),
    "torch.compile(backbone)": Option(compile_backbone=True),
}


def _timed_turns(runs: dict[str, Callable[[], object]], repeats: int) -> tuple[dict[str, float], dict, dict]:
    """Each run once untimed (its seconds kept: first-call and compile time), then `repeats` timed rounds taking
    turns: the median seconds, the first run's seconds and each run's last result."""
    first, results, times = {}, {}, {name: [] for name in runs}
    for name, run in runs.items():
        start = time.perf_counter()
        results[name] = run()
        first[name] = time.perf_counter() - start
    for _, name in bench_output.in_turns(list(runs), repeats):
        start = time.perf_counter()
        results[name] = runs[name]()
        times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, first, results


def _evaluation_pass(model: torch.nn.Module, dataset, workers: int) -> Callable[[], dict]:
    loader = samplers.build_data_loaders(argparse.Namespace(workers=workers), None, dataset, torch.device("cpu"), 0)[3]

    def run() -> dict:
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = engine.evaluate(model, loader, torch.device("cpu"), print_freq=10**9)
        return {t: np.array(e.stats) for t, e in evaluator.coco_eval.items()}

    return run


def inference_table(model, dataset, threads: list[int], repeats: int) -> str:
    lines = [
        "| threads | option | s / image | / default | compile or first-pass overhead (s) | box AP | mask AP "
        "| largest change of the 24 numbers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    images = len(dataset)
    for count in threads:
        torch.set_num_threads(count)
        runs = {
            name: _evaluation_pass(o.apply(model, inference=True), dataset, 1) for name, o in INFERENCE_OPTIONS.items()
        }
        medians, first, stats = _timed_turns(runs, repeats)
        for name in runs:
            change = max(np.abs(stats[name][t] - stats[DEFAULT][t]).max() for t in stats[DEFAULT])
            lines.append(
                f"| {count} | {name} | {medians[name] / images:.4f} | {medians[name] / medians[DEFAULT]:.2f} | "
                f"{first[name] - medians[name]:.1f} | {stats[name]['bbox'][0]:.4f} | {stats[name]['segm'][0]:.4f} | "
                f"{change:.4f} |"
            )
    return "\n".join(lines)


def workers_table(model, dataset, threads: list[int], repeats: int) -> str:
    lines = ["| threads | data loading workers | s / image |", "|---|---|---|"]
    for count in threads:
        torch.set_num_threads(count)
        runs = {workers: _evaluation_pass(model, dataset, workers) for workers in (0, 1, 2)}
        medians, _, _ = _timed_turns(runs, repeats)
        lines += [f"| {count} | {workers} | {medians[workers] / len(dataset):.4f} |" for workers in runs]
    return "\n".join(lines)


def training_batches(root: Path, count: int, batch_size: int = 4) -> list[tuple[list, list]]:
    """`count` batches of the demo's training split, augmented once (seeded), as the engine gets them."""
    torch.manual_seed(0)
    dataset = coco_utils.get_coco(root, "train", transforms.get_transform(True))
    samples = [dataset[i] for i in range(count * batch_size)]
    batches = []
    for b in range(count):
        images, targets = utils.collate_fn(samples[b * batch_size : (b + 1) * batch_size])
        batches.append((images_to_device(images, torch.device("cpu")), list(targets)))
    return batches


def _training_steps(option: Option, batches: list) -> Callable[[], None]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "maskrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=demo_setup.DEMO_NUM_CLASSES,
        **demo_setup.DEMO_MODEL_KWARGS,
    )  # fmt: skip
    model = option.apply(model).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    scaler = torch.amp.GradScaler("cpu") if option.bf16 else None

    def run() -> None:
        for images, targets in batches:
            with option.context():
                loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

    return run


def training_table(root: Path, threads: list[int], repeats: int, iterations: int) -> str:
    batches = training_batches(root, iterations)
    lines = ["| threads | option | s / iteration | / default | first-pass overhead (s) |", "|---|---|---|---|---|"]
    for count in threads:
        torch.set_num_threads(count)
        runs = {name: _training_steps(o, batches) for name, o in TRAINING_OPTIONS.items()}
        medians, first, _ = _timed_turns(runs, repeats)
        for name in runs:
            per_iteration = medians[name] / iterations
            lines.append(
                f"| {count} | {name} | {per_iteration:.3f} | {medians[name] / medians[DEFAULT]:.2f} | "
                f"{first[name] - medians[name]:.1f} |"
            )
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = demo_setup.parser(__doc__, repeats=2)
    parser.add_argument("--iterations", type=int, default=4, help="training iterations per timed pass")
    parser.add_argument("--parts", nargs="+", choices=["inference", "workers", "training"], default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    parts = args.parts or ["inference", "workers", "training"]
    print(f"Machine: {bench_output.machine(torch.device('cpu'))}")
    with tempfile.TemporaryDirectory() as folder:
        root = demo_setup.demo_split(args.data_path, folder)
        dataset = demo_setup.validation_set(root, args.images)
        model, note = demo_setup.demo_model(args.checkpoint)
        print(f"{len(dataset)} validation images of {root}; model: {note}\n")
        if "inference" in parts:
            print("Inference: a whole evaluation pass, -j 1\n")
            print(inference_table(model, dataset, args.threads, args.repeats) + "\n")
        if "workers" in parts:
            print("Threads and workers: the default evaluation pass\n")
            print(workers_table(model, dataset, args.threads, args.repeats) + "\n")
        if "training" in parts:
            print(f"Training: {args.iterations} iterations of batch 4 per pass, the demo's model from scratch\n")
            print(training_table(root, args.threads, args.repeats, args.iterations))


if __name__ == "__main__":
    main()

"""How much train_one_epoch adds around the model call, against a bare training loop.

Both loops train Mask R-CNN (the demo's sampling) on the same in-memory batches of 128 px images,
from the same initial weights; ours adds what engine.py does per iteration (uint8 to float on the
device, the loss reduction and non-finite check, warm-up lr, logging, the stop-signal check).
Runs alternate (bare, ours, bare, ours, ...) so that drift on a noisy machine hits both alike;
the table gives the median seconds per iteration and the ratio.

    python benchmarks/bench_train_step.py [--iterations 12] [--repeats 3] [--batch-size 2]
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import StopSignal, train_one_epoch  # noqa: E402

DEMO_SAMPLING = dict(
    box_batch_size_per_image=32,
    rpn_batch_size_per_image=64,
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=300,
)


def _batches(count: int, batch_size: int, size: int = 128) -> list[tuple[tuple, tuple]]:
    """Random uint8 images with 3 boxes and masks each, as the DataLoader would give them."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for b in range(count):
        images, targets = [], []
        for i in range(batch_size):
            images.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator))
            corners = torch.randint(0, size // 2, (3, 2), generator=generator).float()
            boxes = torch.cat([corners, corners + size // 3], dim=1)
            masks = torch.zeros(3, size, size, dtype=torch.uint8)
            for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
                m[y0:y1, x0:x1] = 1
            targets.append(
                {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks, "image_id": b * batch_size + i}
            )
        batches.append((tuple(images), tuple(targets)))
    return batches


def _bare_loop(model, optimizer, batches) -> None:
    model.train()
    for images, targets in batches:
        images = [image.float().div_(255) for image in images]
        loss_dict = model(images, list(targets))
        loss = sum(loss_dict.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _ours(model, optimizer, batches) -> None:
    train_one_epoch(model, optimizer, batches, torch.device("cpu"), epoch=0, print_freq=10**9, stop=StopSignal())


def _time_per_iteration(loop, initial_model, batches) -> float:
    model = copy.deepcopy(initial_model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001, momentum=0.9)
    torch.manual_seed(0)
    start = time.perf_counter()
    loop(model, optimizer, batches)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=12, help="iterations per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each loop")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "maskrcnn_resnet50_fpn",
        weights=None,
        weights_backbone=None,
        num_classes=4,
        min_size=128,
        max_size=128,
        **DEMO_SAMPLING,
    )
    batches = _batches(args.iterations, args.batch_size)
    _time_per_iteration(_bare_loop, model, batches[:2])  # warm-up: first-call allocations
    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(_time_per_iteration(_bare_loop, model, batches))
        ours.append(_time_per_iteration(_ours, model, batches))
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    ratio = ours_s / bare_s
    setting = (
        f"batch {args.batch_size}, {args.iterations} iterations x {args.repeats} runs, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"Mask R-CNN, 128 px, {setting}")
    print()
    print("| loop | s / iteration (median) | ratio to bare | goal | met? |")
    print("|---|---|---|---|---|")
    print(f"| bare loop (forward, backward, step) | {bare_s:.4f} | 1.000 | | |")
    print(f"| engine.train_one_epoch | {ours_s:.4f} | {ratio:.3f} | <= 1.05 | {'yes' if ratio <= 1.05 else 'no'} |")


if __name__ == "__main__":
    main()

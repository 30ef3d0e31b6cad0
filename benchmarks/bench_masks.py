"""Benchmark: Mask R-CNN's raw 28x28 masks to COCO RLE strings for one image.

Baseline (the reference): torchvision's paste_masks_in_image (one full-size image per mask), then
each mask thresholded at 0.5 and RLE-encoded by pycocotools on its own. Ours:
masks.paste_masks_to_rles (pasted, thresholded and encoded inside each box, groups of boxes at a
time, on the device). Both take the same inputs, in turn, in this process; the table shows the
median time per image and the ratio. The masks must come out the same: the script counts any that
differ, and the pixels.

    python benchmarks/bench_masks.py                                  # 100 masks into 480x640, 30 images
    python benchmarks/bench_masks.py --size 480x640 --size 800x1216 --images 100 --device cuda
"""

import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_output  # noqa: E402
import detections  # noqa: E402

from masks import paste_masks_to_rles  # noqa: E402

GOAL = 10  # ours at most 1/10 of the baseline's time, for 100 masks into 480x640

# pycocotools' encoder reads torch tensors through numpy's deprecated __array__ path: not ours to fix
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword")


def reference_rles(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> list[bytes]:
    """The reference's way: paste into full-size images, move them to the CPU, threshold, encode one by one."""
    pasted = paste_masks_in_image(masks, boxes, image_size).cpu()
    binary = pasted > 0.5
    return [
        mask_utils.encode(np.array(mask[0, :, :, np.newaxis], dtype=np.uint8, order="F"))[0]["counts"]
        for mask in binary
    ]


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def _differing_pixels(ours: list[bytes], reference: list[bytes], image_size: tuple[int, int]) -> tuple[int, int]:
    masks = pixels = 0
    for a, b in zip(ours, reference):
        if a != b:
            size = list(image_size)
            masks += 1
            pixels += int(
                (mask_utils.decode({"size": size, "counts": a}) != mask_utils.decode({"size": size, "counts": b})).sum()
            )
    return masks, pixels


def run(
    image_size: tuple[int, int], num_masks: int, images: int, device: torch.device, seed: int
) -> tuple[float, float, str]:
    gt, instances = detections.ground_truth(images + 1, seed=seed, sizes=(image_size,))
    inputs = list(detections.raw_detections(gt, instances, per_image=num_masks, seed=seed).values())
    baseline_times, our_times = [], []
    differing = [0, 0]
    for i, output in enumerate(inputs):
        masks, boxes = output["raw_masks"].to(device), output["boxes"].to(device)
        start = time.perf_counter()
        reference = reference_rles(masks, boxes, image_size)
        middle = time.perf_counter()
        ours = paste_masks_to_rles(masks, boxes, image_size)
        end = time.perf_counter()
        if i == 0:
            continue  # warm-up
        baseline_times.append(middle - start)
        our_times.append(end - middle)
        for k, v in enumerate(_differing_pixels(ours, reference, image_size)):
            differing[k] += v
    total = images * num_masks
    same = f"{total - differing[0]} of {total} masks identical ({differing[1]} pixels differ)"
    return statistics.median(baseline_times) * 1e3, statistics.median(our_times) * 1e3, same


def main(argv: list[str] | None = None) -> None:
    parser = bench_output.parser(__doc__, device_help="where the masks are pasted: cpu or cuda")
    parser.add_argument("--size", action="append", type=_size, help="image HEIGHTxWIDTH (repeatable); default 480x640")
    parser.add_argument("--masks", type=int, default=100, help="masks per image")
    parser.add_argument("--images", type=int, default=30, help="images (rounds) timed per size")
    args, device = bench_output.setup(parser, argv)
    rows, checks = [], []
    for height, width in args.size or [(480, 640)]:
        baseline, ours, same = run((height, width), args.masks, args.images, device, args.seed)
        goal = GOAL if (height, width) == (480, 640) else None
        rows.append((f"{args.masks} masks into {height}x{width}: paste, threshold, RLE", baseline, ours, goal))
        checks.append(f"{height}x{width}: {same}")
    print(f"\nMedian per image over {args.images} images, {args.masks} masks each (ratio: baseline / ours):\n")
    print(bench_output.table(rows, unit="ms"))
    print("\nSame masks: " + "; ".join(checks))


if __name__ == "__main__":
    main()

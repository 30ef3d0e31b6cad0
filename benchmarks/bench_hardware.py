"""How far from the hardware (issue #21): Mask R-CNN's FLOPs per image against what the cores achieve on a matmul.

For each size, the model's FLOPs per image are counted by torch's FLOP counter (torch.utils.flop_counter: matrix
multiplies and convolutions, forward and backward; RoIAlign, NMS and the element-wise work are not counted, so the
fractions below are lower bounds of the work done), and the same passes are timed: an inference pass (eval mode, one
image) and a training step (train mode, forward and backward, one image with its targets). The cores' achieved FLOP/s
is the best of a few square fp32 (and bf16) matrix multiplies of --matmul-size, at the same thread count. The
fraction of the machine a pass uses is its FLOPs / its time / the matmul's FLOP/s.

Sizes: "demo" (a 128x96 image at the demo's min/max size 128 and its --model-kwargs) and "coco" (a 640x480 image,
resized by the model to 800x1066, torchvision's default sampling: 2000/1000 proposals, 512 RoIs per image).
The model is maskrcnn_resnet50_fpn with 91 classes and random heads, its backbone the calibrated stand-in ResNet-50
with FrozenBatchNorm and the last 3 stages trainable, as train.py builds it around an ImageNet backbone.

    python benchmarks/bench_hardware.py                     # both sizes, 1 and 2 threads (about 2 minutes here)
    python benchmarks/bench_hardware.py --sizes demo --threads 2
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import misc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_output  # noqa: E402
import demo_setup  # noqa: E402

import synthetic  # noqa: E402

SIZES = {
    # label: (image (width, height), builder keyword arguments)
    "demo": ((128, 96), demo_setup.DEMO_MODEL_KWARGS),
    "coco": ((640, 480), {}),
}


def build_model(kwargs: dict) -> torch.nn.Module:
    """train.py's model around an ImageNet backbone: FrozenBatchNorm, layers 2-4 trainable (the stand-in's values)."""
    torch.manual_seed(0)
    backbone = torchvision.models.resnet50(norm_layer=misc.FrozenBatchNorm2d)
    backbone.load_state_dict(synthetic.standin_resnet50())
    backbone = torchvision.models.detection.backbone_utils._resnet_fpn_extractor(backbone, 3)
    return torchvision.models.detection.MaskRCNN(backbone, num_classes=91, **kwargs)


def image_and_target(size: tuple[int, int]) -> tuple[torch.Tensor, dict]:
    """One of the demo's pictures at `size`, and a target of three boxes with their masks."""
    picture = synthetic.shapes_images(1, seed=1)[0].resize(size)
    image = torchvision.transforms.functional.to_tensor(picture)
    width, height = size
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.2, 0.6, 0.6, 0.95]]) * torch.tensor(
        [width, height, width, height]
    )
    masks = torch.zeros(3, height, width, dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        mask[y0:y1, x0:x1] = 1
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks}


def inference(model: torch.nn.Module, image: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model.eval()([image])

    return run


def training_step(model: torch.nn.Module, image: torch.Tensor, target: dict) -> Callable[[], None]:
    def run() -> None:
        model.train()
        losses = model([image], [target])
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    return run


def flops(work: Callable[[], None]) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def seconds(work: Callable[[], None], repeats: int) -> float:
    """The median of `repeats` timed runs, after one untimed."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_second(n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """The best of `repeats` n x n x n matrix multiplies: 2 n^3 FLOPs each."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per pass (the median)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    print(f"Machine: {bench_output.machine(torch.device('cpu'))}\n")
    peaks = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            peaks[threads, dtype] = matmul_flops_per_second(args.matmul_size, dtype)
    print("| threads | matmul fp32 (GFLOP/s) | matmul bf16 (GFLOP/s) |\n|---|---|---|")
    for threads in args.threads:
        fp32, bf16 = peaks[threads, torch.float32], peaks[threads, torch.bfloat16]
        print(f"| {threads} | {fp32 / 1e9:.1f} | {bf16 / 1e9:.1f} |")
    print(
        "\n| size | pass | GFLOPs / image | threads | s / image | achieved GFLOP/s | fraction of the fp32 matmul's |"
        "\n|---|---|---|---|---|---|---|"
    )
    for label in args.sizes:
        size, kwargs = SIZES[label]
        model = build_model(kwargs)
        image, target = image_and_target(size)
        passes = {
            "inference (forward)": inference(model, image),
            "training (forward + backward)": training_step(model, image, target),
        }
        for name, work in passes.items():
            torch.set_num_threads(max(args.threads))
            count = flops(work)
            for threads in args.threads:
                torch.set_num_threads(threads)
                took = seconds(work, args.repeats)
                achieved = count / took
                print(
                    f"| {label} {size[0]}x{size[1]} | {name} | {count / 1e9:.1f} | {threads} | {took:.3f} | "
                    f"{achieved / 1e9:.1f} | {achieved / peaks[threads, torch.float32]:.0%} |"
                )


if __name__ == "__main__":
    main()

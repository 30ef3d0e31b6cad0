r"""Export a trained model to ONNX, and check the file against the eager model before saying done.

    python export.py output/demo/checkpoint.pth --output output/demo/model.onnx --data-path data/synthetic
    python predict.py --onnx output/demo/model.onnx data/synthetic/val2017

Every weights file predict.py reads exports: train.py's checkpoints, torchvision state dicts and reference
checkpoints, weight enums from the hub cache (--model names the architecture of a file that records none). The file
takes one RGB image as a float tensor of any size and returns the model's boxes, labels, scores and unpasted masks
(or keypoints); its metadata holds the class names and the model's size settings (deployed.py: the contract).

The export verifies itself: ONNX Runtime and the eager model predict on a few images (the validation images of
--data-path, else synthetic ones, and always a blank one), their detections are matched, and the largest differences
are printed. Outside the tolerances (README, "Deploy") the file is not written and the command fails with one line.
"""

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as F

import deployed
import errors
import files
import synthetic
from images import IMAGE_READ_ERRORS, UnreadableImage, read_rgb
from models import check_model_name, trained_model_named

# The largest differences between ONNX Runtime's detections and the eager model's that a verified export may have.
BOX_TOLERANCE_PX = 0.01
SCORE_TOLERANCE = 1e-4
MIN_MASK_IOU = 0.99
# Below this score, a detection that one side has and the other lacks is counted, not failed: among a model's many
# weak detections, float rounding (1e-5) decides some NMS and top-100 choices that sit on their threshold.
UNMATCHED_BELOW = 0.5
SAME_DETECTION_IOU = 0.99  # a pair of boxes at least this close is one detection on both sides
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = errors.OneLineArgumentParser(
        description="Export a trained detection model to ONNX, verified against the eager model",
        add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    add = parser.add_argument
    add("checkpoint", metavar="CHECKPOINT", help="weights, as predict.py --checkpoint takes them")
    add("--output", required=True, metavar="MODEL_ONNX", help="the ONNX file to write (its folder must exist)")
    add("--model", default=None, help="the architecture of a file that does not record one (a torchvision state dict)")
    add("--data-path", default=None, help="verify on this dataset's val2017 images (default: synthetic images)")
    add("--verify-images", default=6, type=int, metavar="N", help="how many images to verify on (and a blank one)")
    return parser


# ----------------------------------------------------------------------------- verification images


def verification_images(data_path: str | None, count: int) -> list[tuple[str, torch.Tensor]]:
    """(name, float image) pairs: the first `count` validation images of `data_path` (else synthetic images of the
    demo's three aspect ratios), then a blank portrait image, where a trained model detects nothing."""
    if data_path is None:
        pictures = [(f"synthetic {i}", p) for i, p in enumerate(synthetic.shapes_images(count))]
    else:
        folder = Path(data_path) / "val2017"
        paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if not paths:
            raise errors.UsageError(f"--data-path: no images in {folder}; pass a COCO-layout folder, or leave it out")
        pictures = [(p.name, _read(p)) for p in paths]
    images = [(name, F.to_dtype(F.pil_to_tensor(p), torch.float32, scale=True)) for name, p in pictures]
    return [*images, ("blank", torch.full((3, 150, 100), 0.5))]


def _read(path: Path):
    try:
        return read_rgb(path)
    except (UnreadableImage, *IMAGE_READ_ERRORS) as e:
        raise errors.UsageError(f"--data-path: {path}: cannot use this image ({e})") from None


# ----------------------------------------------------------------------------- comparing detections


@dataclass
class Agreement:
    """How one image's ONNX Runtime detections compare with the eager model's."""

    name: str
    size: tuple[int, int]
    eager: int  # detections
    onnx: int
    box_px: float = 0.0  # largest coordinate difference of matched detections' boxes (and keypoints' x, y)
    score: float = 0.0
    mask_iou: float = 1.0  # smallest, of matched detections' thresholded masks
    unmatched: int = 0  # detections of one side only
    unmatched_score: float = 0.0  # the highest score among them

    def within_tolerances(self) -> bool:
        return (self.unmatched_score < UNMATCHED_BELOW and self.box_px <= BOX_TOLERANCE_PX
                and self.score <= SCORE_TOLERANCE and self.mask_iou >= MIN_MASK_IOU)  # fmt: skip


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def match_detections(eager: dict, onnx: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (eager index, ONNX index) of one detection on both sides: the same label and boxes at least
    SAME_DETECTION_IOU alike, each detection in one pair at most, the closest pairs first."""
    overlap = box_iou(eager["boxes"], onnx["boxes"])
    overlap[eager["labels"][:, None] != onnx["labels"][None, :]] = -1
    candidates = sorted(torch.nonzero(overlap >= SAME_DETECTION_IOU).tolist(), key=lambda p: -float(overlap[tuple(p)]))
    paired_e, paired_o = {}, set()  # eager index -> ONNX index
    for i, j in candidates:
        if i not in paired_e and j not in paired_o:
            paired_e[i] = j
            paired_o.add(j)
    e = torch.tensor(sorted(paired_e), dtype=torch.int64)
    return e, torch.tensor([paired_e[i] for i in e.tolist()], dtype=torch.int64)


def compare(name: str, eager: dict, onnx: dict, size: tuple[int, int]) -> Agreement:
    """Match the two sides' detections (match_detections), measure the differences of the pairs, and count the
    detections of one side only."""
    agreement = Agreement(name, size, len(eager["scores"]), len(onnx["scores"]))
    e, o = match_detections(eager, onnx)
    alone = [side["scores"][torch.isin(torch.arange(len(side["scores"])), index, invert=True)]
             for side, index in ((eager, e), (onnx, o))]  # fmt: skip
    agreement.unmatched = sum(len(scores) for scores in alone)
    agreement.unmatched_score = max((float(scores.max()) for scores in alone if len(scores)), default=0.0)
    if len(e):
        agreement.box_px = float((eager["boxes"][e] - onnx["boxes"][o]).abs().max())
        if "keypoints" in eager:
            keypoints = (eager["keypoints"][e, :, :2] - onnx["keypoints"][o, :, :2]).abs().max()
            agreement.box_px = max(agreement.box_px, float(keypoints))
        agreement.score = float((eager["scores"][e] - onnx["scores"][o]).abs().max())
        if "masks" in eager:
            agreement.mask_iou = min(_mask_iou(eager["masks"][i], onnx["masks"][j]) for i, j in zip(e, o))
    return agreement


def verify(model: torch.nn.Module, onnx_model: deployed.OnnxModel, images: list) -> list[Agreement]:
    """Each image through both models; their agreements."""
    agreements = []
    for name, image in images:
        with torch.inference_mode():
            eager = model([image])[0]
        onnx = onnx_model([image])[0]
        agreements.append(compare(name, eager, onnx, tuple(image.shape[-2:])))
    return agreements


def print_table(agreements: list[Agreement]) -> None:
    print("| image | size | detections eager / ONNX | of one side only (best score) | max box / keypoint diff (px) | "
          "max score diff | min mask IoU | ok |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for a in agreements:
        alone = f"{a.unmatched} ({a.unmatched_score:.2f})" if a.unmatched else "0"
        print(f"| {a.name} | {a.size[1]}x{a.size[0]} | {a.eager} / {a.onnx} | {alone} | {a.box_px:.2g} | "
              f"{a.score:.2g} | {a.mask_iou:.4f} | {'yes' if a.within_tolerances() else 'NO'} |")  # fmt: skip


# ----------------------------------------------------------------------------- main


def _check_args(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise errors.UsageError(f"--output: {output} does not end in .onnx; name the file model.onnx or similar")
    if not output.parent.is_dir():
        raise errors.UsageError(f"--output: no folder {output.parent}; create it first, or choose another path")
    if output.is_dir():
        raise errors.UsageError(f"--output: {output} is a folder; name the file to write")
    if args.verify_images < 1:
        raise errors.UsageError(f"--verify-images: must be at least 1, got {args.verify_images}")
    if args.model is not None:
        check_model_name(args.model)
    return output


def export(args: argparse.Namespace) -> int:
    """Export, verify, then write --output (atomically; a failed check leaves an existing file as it was)."""
    output = _check_args(args)
    images = verification_images(args.data_path, args.verify_images)
    model, classes, name = trained_model_named(args.checkpoint, torch.device("cpu"), args.model)
    metadata = deployed.metadata_for(model, name, classes, str(args.checkpoint))
    with tempfile.TemporaryDirectory(dir=output.parent) as work:
        candidate = Path(work) / output.name
        deployed.export_onnx(model, images[0][1], candidate, metadata)
        agreements = verify(model, deployed.OnnxModel(candidate, "--output"), images)
        print_table(agreements)
        failed = [a for a in agreements if not a.within_tolerances()]
        if failed:
            worst = failed[0]
            print(f"error: the export does not match the eager model on {len(failed)} of {len(agreements)} images "
                  f"({worst.name}: boxes {worst.box_px:.3g} px, scores {worst.score:.3g}, mask IoU "
                  f"{worst.mask_iou:.4f}, a detection of one side only scoring {worst.unmatched_score:.2f}; "
                  f"tolerances {BOX_TOLERANCE_PX} px, {SCORE_TOLERANCE}, {MIN_MASK_IOU}, {UNMATCHED_BELOW}); "
                  f"{output} not written", file=sys.stderr)  # fmt: skip
            return 1
        files.replace_atomically(output, lambda tmp: candidate.replace(tmp))
    megabytes = output.stat().st_size / 2**20
    alone = sum(a.unmatched for a in agreements)
    print(f"Verified on {len(agreements)} images: boxes within {BOX_TOLERANCE_PX} px, scores within "
          f"{SCORE_TOLERANCE}, mask IoU at least {MIN_MASK_IOU}; {alone} detections of one side only, all scoring "
          f"below {UNMATCHED_BELOW}")  # fmt: skip
    print(f"Saved {output} ({megabytes:.1f} MB, {name}, {len(classes.label_to_category_id)} classes)")
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return export(args)
    except errors.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())

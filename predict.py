r"""Run a model trained by train.py on image files or folders: PNG pictures of its predictions and a COCO results file.

    python predict.py --checkpoint output/demo/checkpoint.pth data/synthetic/val2017 --output-dir output/demo/pictures

Each picture shows the detections scoring at least --score-thresh: masks, boxes, class names and
scores (and keypoints, for a keypoint model), drawn with torchvision.utils. predictions.json holds
every detection of a category the model returns, as a COCO results list whose entries also name their file.
With --annotations (a COCO annotation file listing the images), image ids are that file's, so
the results can be scored with pycocotools; otherwise images are numbered 1, 2, ... in input order.
The checkpoint says which model to build and the names of its classes (train.py stores them).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as F
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

import coco_eval
import utils
import weights
from annotations import read_annotation_file
from checkpoint import read_model_file
from coco_utils import Classes
from images import IMAGE_READ_ERRORS, UnreadableImage, read_rgb
from masks import MASK_THRESHOLD
from models import DEFAULT_MODEL, iou_types_of, model_from_checkpoint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Distinct colours, one per class (label modulo their number).
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0),
]  # fmt: skip


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw a trained detection model's predictions", add_help=add_help)
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of images (not recursive)"
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="FILE",
        help="weights: a checkpoint or model_{epoch}.pth written by train.py, a torchvision reference checkpoint, a "
        "torchvision state dict, or a torchvision enum such as MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (hub cache)",
    )  # fmt: skip
    parser.add_argument(
        "--model", default=None, help=f"the architecture of a file that does not record one (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--output-dir", default="predictions", help="where the pictures and predictions.json go")
    parser.add_argument("--score-thresh", default=0.5, type=float, help="draw detections scoring at least this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument(
        "--annotations", default=None, metavar="FILE", help="COCO annotation file whose image ids the results use"
    )
    parser.add_argument("--max-images", default=None, type=int, metavar="N", help="only the first N images")
    parser.add_argument(
        "--upscale-to",
        default=0,
        type=int,
        metavar="PIXELS",
        help="draw on images enlarged to this shorter side (readable labels)",
    )
    return parser


# ----------------------------------------------------------------------------- inputs


def find_images(inputs: list[str]) -> list[Path]:
    """The image files named, and those inside the folders named (sorted by name), in the order given."""
    images = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise utils.UsageError(f"{path}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise utils.UsageError(f"{path} does not exist; pass image files or folders of images")
    return images


def _image_ids(images: list[Path], annotations: str | None) -> list[int]:
    """Each image's id: the annotation file's (matched by file name), or 1, 2, ..."""
    if annotations is None:
        return list(range(1, len(images) + 1))
    listed = {Path(entry.file_name).name: entry.id for entry in read_annotation_file(Path(annotations)).images}
    unlisted = [path.name for path in images if path.name not in listed]
    if unlisted:
        raise utils.UsageError(
            f"--annotations: {annotations} does not list {unlisted[0]} ({len(unlisted)} images unlisted)"
        )
    return [listed[path.name] for path in images]


def check_image(path: Path) -> None:
    """A UsageError naming `path` if PIL does not recognise it as an image; reads only its header (fast)."""
    try:
        Image.open(path).close()
    except IMAGE_READ_ERRORS as e:
        raise utils.UsageError(f"{path}: not an image PIL can read ({utils.short_reason(e)})") from None


def read_image(path: Path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 tensor, read as training reads it; a UsageError naming it if PIL cannot."""
    try:
        return F.pil_to_tensor(read_rgb(path))
    except UnreadableImage as e:
        raise utils.UsageError(f"{path}: not an image PIL can read ({e})") from None


# ----------------------------------------------------------------------------- model


def load_trained_model(
    value: str, device: torch.device, model_name: str | None = None
) -> tuple[torch.nn.Module, Classes]:
    """The model a weights file (or torchvision enum) holds, in eval mode, and its classes (label_to_category_id,
    categories, keypoints); `model_name` builds a file that records no model."""
    path = weights.resolve(value, "--checkpoint").path
    model, classes = model_from_checkpoint(read_model_file(path, "--checkpoint"), path, "--checkpoint", model_name)
    return model.to(device).eval(), classes


# ----------------------------------------------------------------------------- pictures and results


def draw_predictions(
    image: torch.Tensor, prediction: dict, names: list[str], score_thresh: float, upscale_to: int = 0, skeleton=None
) -> torch.Tensor:
    """`image` (uint8, 3 x H x W) with the detections scoring at least `score_thresh` drawn on it:
    masks, then boxes labelled "name score", then keypoints; enlarged first to `upscale_to` pixels
    on its shorter side, so the labels' fixed-size font stays readable on small images."""
    keep = prediction["scores"] >= score_thresh
    height, width = image.shape[-2:]
    scale = max(1.0, upscale_to / min(height, width))
    size = [round(height * scale), round(width * scale)]
    picture = F.resize(image, size, antialias=True) if scale > 1 else image
    labels = prediction["labels"][keep].tolist()
    colors = [PALETTE[label % len(PALETTE)] for label in labels]
    if "masks" in prediction and keep.any():
        probabilities = prediction["masks"][keep][:, 0]
        if scale > 1:
            probabilities = F.resize(probabilities, size, antialias=False)
        masks = probabilities > MASK_THRESHOLD
        picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors=colors)
    captions = [f"{names[label]} {score:.2f}" for label, score in zip(labels, prediction["scores"][keep].tolist())]
    if keep.any():  # torchvision warns on every image with no box to draw
        picture = draw_bounding_boxes(
            picture, prediction["boxes"][keep] * scale, captions, colors=colors, width=2, fill_labels=True
        )
    if "keypoints" in prediction and keep.any():
        keypoints = prediction["keypoints"][keep]
        connectivity = [(a - 1, b - 1) for a, b in skeleton] if skeleton else None
        picture = draw_keypoints(picture, keypoints[..., :2] * scale, connectivity, colors="white", radius=2, width=2)
    return picture


def results_entries(
    image_id: int, file_name: str, prediction: dict, iou_types: list[str], label_to_category_id: np.ndarray
) -> list[dict]:
    """One image's detections as COCO results entries (category ids, xywh boxes, RLE masks), naming the file."""
    result = coco_eval.compact_result(prediction, iou_types, label_to_category_id)
    return [{**entry, "file_name": file_name} for entry in coco_eval.results_file_entries(image_id, result, iou_types)]


def _picture_path(output_dir: Path, image: Path, taken: set[str]) -> Path:
    """<output-dir>/<image name>.png; an image with the same name from another folder gets a numbered one."""
    name, number = image.stem, 1
    while name in taken:
        number += 1
        name = f"{image.stem}_{number}"
    taken.add(name)
    return output_dir / f"{name}.png"


@torch.inference_mode()
def predict(args: argparse.Namespace) -> Path:
    """Write a picture per image and predictions.json; return the results file's path."""
    if not 0 <= args.score_thresh <= 1:
        raise utils.UsageError(f"--score-thresh: must be between 0 and 1, got {args.score_thresh}")
    if args.max_images is not None and args.max_images < 1:
        raise utils.UsageError(f"--max-images: must be at least 1, got {args.max_images}")
    utils.check_device(args.device)
    detection_models = torchvision.models.list_models(module=torchvision.models.detection)
    if args.model is not None and args.model not in detection_models:
        raise utils.UsageError(f"--model: unknown model {args.model!r}; choose one of {', '.join(detection_models)}")
    images = find_images(args.inputs)[: args.max_images]
    image_ids = _image_ids(images, args.annotations)
    for path in (
        images
    ):  # a file that is no image stops the run now, not after the pictures before it (without predictions.json)
        check_image(path)
    device = torch.device(args.device)
    model, classes = load_trained_model(args.checkpoint, device, args.model)
    names, iou_types, labels = classes.names(), iou_types_of(model), classes.category_labels()
    label_to_category_id = np.asarray(classes.label_to_category_id, dtype=np.int64)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # An input PNG in --output-dir keeps its file: its picture takes a numbered name instead.
    entries, taken = (
        [],
        {
            path.stem
            for path in images
            if path.suffix.lower() == ".png" and path.parent.resolve() == output_dir.resolve()
        },
    )
    for image_id, path in zip(image_ids, images):
        image = read_image(path)
        prediction = {
            k: v.cpu() for k, v in model([F.to_dtype(image.to(device), torch.float32, scale=True)])[0].items()
        }
        # Only detections of a category: a label no category has would be written as a category id the data lacks.
        kept = torch.isin(prediction["labels"], labels)
        prediction = {k: v[kept] for k, v in prediction.items()}
        entries += results_entries(image_id, path.name, prediction, iou_types, label_to_category_id)
        picture = draw_predictions(
            image, prediction, names, args.score_thresh, args.upscale_to, classes.keypoint_skeleton
        )
        picture_path = _picture_path(output_dir, path, taken)
        F.to_pil_image(picture).save(picture_path)
        shown = int((prediction["scores"] >= args.score_thresh).sum())
        print(f"{path}: {len(prediction['scores'])} detections, {shown} drawn in {picture_path}")
    return utils.save_json(entries, output_dir / "predictions.json")


def cli(argv: list[str] | None = None) -> int:
    """Run predict(); bad input is one line on stderr and exit status 2."""
    args = get_args_parser().parse_args(argv)
    try:
        path = predict(args)
    except utils.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())

r"""Run a model on image files or folders, or look at an annotation file's labels: PNG pictures and a results file.

    python predict.py --checkpoint output/demo/checkpoint.pth data/synthetic/val2017 --output-dir output/demo/pictures
    python predict.py --ground-truth data/synthetic/annotations/instances_val2017.json data/synthetic/val2017
    python predict.py --onnx output/demo/model.onnx data/synthetic/val2017 --output-dir output/demo/pictures_onnx

Each picture shows the detections scoring at least --score-thresh: masks, boxes, class names and
scores (and keypoints, for a keypoint model), drawn with torchvision.utils, every label inside the picture.
predictions.json holds every detection of a category the model returns, as a COCO results list whose entries
also name their file. With --annotations (a COCO annotation file listing the images), image ids are that file's,
so the results can be scored with pycocotools; otherwise images are numbered 1, 2, ... in input order.
With --ground-truth, each picture shows that file's annotations (masks, boxes, names; crowd regions marked), on
the left of the predictions when a --checkpoint is given, alone without one: the way to check labels before
training. Folders are searched recursively, as exports nest images in sub-folders.
The checkpoint says which model to build and the names of its classes (train.py stores them).
"""

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

import annotations
import coco_eval
import deployed
import distributed
import errors
import files
from annotations import AnnotationTable
from errors import DataError
from images import IMAGE_READ_ERRORS, UnreadableImage, images_to_device, read_rgb
from models import DEFAULT_MODEL, check_model_name, iou_types_of, load_trained_model
from pictures import GroundTruth, draw_predictions, side_by_side

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = errors.OneLineArgumentParser(
        description="Draw a trained detection model's predictions, or an annotation file's labels",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders of images (searched recursively)")
    add("--checkpoint", default=None, metavar="FILE",
        help="weights: a checkpoint or model_{epoch}.pth written by train.py, a torchvision reference checkpoint, a "
        "torchvision state dict, or a torchvision enum such as MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (hub cache); "
        "needed unless --ground-truth")  # fmt: skip
    add("--onnx", default=None, metavar="MODEL_ONNX",
        help="instead of --checkpoint: a model.onnx export.py wrote, run on the CPU (--onnx-runtime)")  # fmt: skip
    add("--onnx-runtime", default="onnxruntime", choices=list(deployed.RUNTIMES), help=deployed.RUNTIME_HELP)
    add("--threads", default=None, type=int, metavar="N", help="--onnx: the runtime's threads (default: all cores)")
    add("--ground-truth", default=None, metavar="ANNOTATIONS",
        help="a COCO annotation file: draw its masks, boxes and names (beside predictions, given a model)")  # fmt: skip
    add("--model", default=None, help=f"the architecture of a file that does not record one (default {DEFAULT_MODEL})")
    add("--output-dir", default="predictions", help="where the pictures and predictions.json go")
    add("--score-thresh", default=0.5, type=float, help="draw detections scoring at least this")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    add("--annotations", default=None, metavar="FILE", help="COCO annotation file whose image ids the results use")
    add("--annotation-format", default="coco", choices=list(annotations.READERS),
        help="the format of --ground-truth and --annotations, as train.py's flag")  # fmt: skip
    add("--max-images", default=None, type=int, metavar="N", help="only the first N images")
    add("--upscale-to", default=0, type=int, metavar="PIXELS",
        help="draw on images enlarged to this shorter side (readable labels)")  # fmt: skip
    return parser


# ----------------------------------------------------------------------------- inputs


def find_images(inputs: list[str], skip: Path | None = None) -> list[Path]:
    """The image files named, and those anywhere inside the folders named (sorted by path), in the order given;
    files under `skip` (the output folder: earlier pictures) are left out of the folders above it."""
    images = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if skip is not None and skip.resolve() != path.resolve():  # a sub-folder holding earlier pictures
                found = [p for p in found if not p.resolve().is_relative_to(skip.resolve())]
            if not found:
                raise errors.UsageError(
                    f"{path}: no image files in this folder or below it ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            images += found
        elif path.is_file():
            images.append(path)
        else:
            raise errors.UsageError(f"{path} does not exist; pass image files or folders of images")
    return images


def listed_rows(images: list[Path], table: AnnotationTable, flag: str) -> list[int]:
    """Each image's row in an annotation file: the entry whose file_name ends the image's path (exports nest images
    in folders, and two folders may hold the same name), else the only entry of that name."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for row, file_name in enumerate(table.file_names):
        by_name[Path(file_name).name].append(row)
    rows = []
    for path in images:
        candidates = by_name.get(path.name, [])
        ending = [row for row in candidates if _ends_with(path, table.file_names[row])]
        if len(ending) == 1 or (not ending and len(candidates) == 1):
            rows.append((ending or candidates)[0])
        elif candidates:
            raise errors.UsageError(
                f"{flag}: {table.source} lists {len(candidates)} images named {path.name}, and not one file_name "
                f"alone ends the path {path}; pass the folder the file_name values are relative to"
            )
        else:
            unlisted = sum(1 for p in images if p.name not in by_name)
            raise errors.UsageError(
                f"{flag}: {table.source} does not list {path.name} ({unlisted} of the {len(images)} images unlisted)"
            )
    return rows


def _ends_with(path: Path, file_name: str) -> bool:
    parts = Path(file_name).parts
    return path.resolve().parts[-len(parts) :] == parts


def check_image(path: Path) -> None:
    """A UsageError naming `path` if PIL does not recognise it as an image; reads only its header (fast)."""
    try:
        Image.open(path).close()
    except IMAGE_READ_ERRORS as e:
        raise errors.UsageError(f"{path}: not an image PIL can read ({errors.short_reason(e)})") from None


def read_image(path: Path, expected_size: tuple[int, int] | None = None, listed_in: str = "") -> torch.Tensor:
    """An image file as a (3, H, W) uint8 tensor, read as training reads it; a UsageError naming it if PIL cannot
    (or if it is not `expected_size`, as the annotation file `listed_in` says)."""
    try:
        return F.pil_to_tensor(read_rgb(path, expected_size, listed_in))
    except UnreadableImage as e:
        raise errors.UsageError(f"{path}: cannot use this image ({e})") from None


# ----------------------------------------------------------------------------- results


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


def _check_flags(args: argparse.Namespace) -> None:
    if args.checkpoint is None and args.onnx is None and args.ground_truth is None:
        raise errors.UsageError("pass --checkpoint FILE to draw a model's predictions, or --ground-truth ANNOTATIONS")
    if args.checkpoint is not None and args.onnx is not None:
        raise errors.UsageError("--onnx: pass either --checkpoint or --onnx, not both")
    deployed.check_runtime_flag(args.onnx, args.onnx_runtime)
    if not 0 <= args.score_thresh <= 1:
        raise errors.UsageError(f"--score-thresh: must be between 0 and 1, got {args.score_thresh}")
    if args.max_images is not None and args.max_images < 1:
        raise errors.UsageError(f"--max-images: must be at least 1, got {args.max_images}")
    distributed.check_device(args.device)
    if args.model is not None:
        check_model_name(args.model)


def _image_ids(images: list[Path], ann_file: str | None, reader: annotations.AnnotationReader) -> list[int]:
    """Each image's id: the annotation file's (matched by path), or 1, 2, ..."""
    if ann_file is None:
        return list(range(1, len(images) + 1))
    try:
        table = reader.read(Path(ann_file))
    except DataError as e:
        raise errors.UsageError(f"--annotations: {e}") from None
    return [int(table.image_ids[row]) for row in listed_rows(images, table, "--annotations")]


class _Model:
    """The model of --checkpoint (or the file of --onnx, under ONNX Runtime), and what turns its outputs into results
    entries and pictures."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        if args.onnx is not None:
            self.model = deployed.OnnxModel(args.onnx, "--onnx", threads=args.threads, runtime=args.onnx_runtime)
            self.classes, device = self.model.classes, torch.device("cpu")
        else:
            self.model, self.classes = load_trained_model(args.checkpoint, device, args.model)
        self.device = device
        self.names, self.iou_types = self.classes.names(), iou_types_of(self.model)
        self.labels = self.classes.category_labels()
        self.label_to_category_id = np.asarray(self.classes.label_to_category_id, dtype=np.int64)

    def __call__(self, image: torch.Tensor) -> dict:
        outputs = self.model(images_to_device([image], self.device))[0]
        prediction = {k: v.cpu() for k, v in outputs.items()}
        # Only detections of a category: a label no category has would be written as a category id the data lacks.
        kept = torch.isin(prediction["labels"], self.labels)
        return {k: v[kept] for k, v in prediction.items()}


@torch.inference_mode()
def predict(args: argparse.Namespace) -> Path:
    """Write a picture per image, and predictions.json with a --checkpoint; return predictions.json's path (the
    pictures' folder without a checkpoint)."""
    _check_flags(args)
    output_dir = Path(args.output_dir)
    images = find_images(args.inputs, skip=output_dir)[: args.max_images]
    ground_truth, reader = None, annotations.reader_named(args.annotation_format)
    if args.ground_truth is not None:
        ground_truth = GroundTruth(Path(args.ground_truth), reader)
        gt_rows = listed_rows(images, ground_truth.table, "--ground-truth")
    if ground_truth is not None and args.annotations is None:  # its image ids, from the file already read
        image_ids = [int(ground_truth.table.image_ids[row]) for row in gt_rows]
    else:
        image_ids = _image_ids(images, args.annotations, reader)
    for path in images:  # a file that is no image stops the run now, not after the pictures before it
        check_image(path)
    model = _Model(args, torch.device(args.device)) if args.checkpoint or args.onnx else None
    if ground_truth is not None and model is not None:
        ground_truth.use_labels(model.classes.label_to_category_id)
    output_dir.mkdir(parents=True, exist_ok=True)
    # An input PNG in --output-dir keeps its file: its picture takes a numbered name instead.
    taken = {p.stem for p in images if p.suffix.lower() == ".png" and p.parent.resolve() == output_dir.resolve()}
    entries, started = [], time.perf_counter()
    for position, (image_id, path) in enumerate(zip(image_ids, images)):
        pictures, said = [], []
        if ground_truth is not None:
            row = gt_rows[position]
            image = read_image(path, ground_truth.size(row), Path(args.ground_truth).name)
            pictures.append(ground_truth.draw(image, row, args.upscale_to))
            said.append(f"{ground_truth.count(row)} annotations")
        else:
            image = read_image(path)
        if model is not None:
            prediction = model(image)
            entries += results_entries(image_id, path.name, prediction, model.iou_types, model.label_to_category_id)
            pictures.append(
                draw_predictions(
                    image, prediction, model.names, args.score_thresh, args.upscale_to, model.classes.keypoint_skeleton
                )
            )
            shown = int((prediction["scores"] >= args.score_thresh).sum())
            said.append(f"{len(prediction['scores'])} detections, {shown} drawn")
        picture_path = _picture_path(output_dir, path, taken)
        F.to_pil_image(pictures[0] if len(pictures) == 1 else side_by_side(*pictures)).save(picture_path)
        print(f"{path}: {', '.join(said)} in {picture_path}")
    seconds = time.perf_counter() - started
    print(f"{len(images)} images in {seconds:.1f} s ({len(images) / max(seconds, 1e-9):.2f} images/s)")
    if model is None:
        return output_dir
    return files.save_json(entries, output_dir / "predictions.json")


def cli(argv: list[str] | None = None) -> int:
    """Run predict(); bad input is one line on stderr and exit status 2."""
    args = get_args_parser().parse_args(argv)
    try:
        path = predict(args)
    except errors.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())

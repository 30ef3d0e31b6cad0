"""Image files: finding them in a folder cheaply, and reading one as the RGB picture a model takes.

Shared by the dataset (coco_utils.CocoDetection) and predict.py, so that training, evaluation and
pictures read a file the same way.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from utils import DataError, warn

# What PIL raises for a file that is not a readable image (truncated, corrupt, not an image at all).
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableImage(Exception):
    """A file cannot serve as its image; the message says why (for a line that names the file)."""


def read_rgb(path: Path, expected_size: tuple[int, int] | None = None, listed_in: str = "") -> Image.Image:
    """The image at `path` as an RGB PIL image; UnreadableImage if PIL cannot read it, or if its (width, height)
    is not `expected_size` (what the annotation file `listed_in` says)."""
    try:
        with Image.open(path) as image:
            image.load()
            # Grayscale and CMYK JPEGs become RGB; an RGB image is used as decoded (convert would copy it).
            image = image if image.mode == "RGB" else image.convert("RGB")
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image file PIL can read") from None
    except IMAGE_READ_ERRORS as e:
        raise UnreadableImage(getattr(e, "strerror", None) or str(e)) from None
    if expected_size is not None and image.size != tuple(expected_size):
        width, height = expected_size
        raise UnreadableImage(f"it is {image.width}x{image.height} but {listed_in} says {width}x{height}")
    return image


def find_missing_files(folder: Path, file_names: Sequence[str]) -> np.ndarray:
    """Which files are not in `folder`: one directory listing per sub-folder and set look-ups, instead of a
    stat per image (118k stats take seconds on a network file system; see benchmarks/bench_data_workers.py)."""
    listings: dict[str, set[str]] = {}
    missing = np.zeros(len(file_names), dtype=bool)
    for i, name in enumerate(file_names):
        directory, _, base = name.rpartition("/")
        if directory not in listings:
            try:
                listings[directory] = set(os.listdir(folder / directory))
            except OSError:
                listings[directory] = set()
        missing[i] = base not in listings[directory]
    return missing


def check_image_files(folder: Path, table, wanted: np.ndarray, skip_missing: bool) -> np.ndarray:
    """Which of the `wanted` images of an annotations.AnnotationTable have no file in `folder`: a DataError naming
    the first, unless `skip_missing`, which leaves them out with one warning."""
    names, indices, ann_file = table.file_names, np.flatnonzero(wanted), table.source
    missing = np.zeros(len(names), dtype=bool)
    missing[indices] = find_missing_files(folder, [names[i] for i in indices.tolist()])
    if not missing.any():
        return missing
    first = int(np.flatnonzero(missing)[0])
    count = int(missing.sum())
    if (folder.parent / names[first]).is_file():  # file_name values that repeat the folder, e.g. train2017/0001.jpg
        raise DataError(
            f"{ann_file}: file_name {names[first]} is relative to {folder.parent}, but file names must be relative "
            f"to {folder}; remove the folder from the file_name values"
        )
    if count == len(indices):
        raise DataError(
            f"{folder} holds none of the {count} images listed in {ann_file} (e.g. {names[first]}); "
            "check that --data-path is the COCO root and the images are unpacked there"
        )
    if not skip_missing:
        raise DataError(
            f"{folder / names[first]} is missing (image id {table.image_ids[first]}; {count} of the {len(indices)} "
            f"images listed in {ann_file} have no file); restore the files, remove them from the annotation file, "
            "or pass --skip-bad-images to leave them out"
        )
    warn(
        f"leaving out {count} of the {len(indices)} images listed in {ann_file}: not in {folder} (e.g. {names[first]})"
    )
    return missing

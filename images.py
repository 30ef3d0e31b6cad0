"""Image files: finding them in a folder cheaply, reading one as the RGB picture a model takes, and handing a batch
to the model on its device.

Shared by the dataset (coco_utils.CocoDetection), engine.py and predict.py, so that training, evaluation and
pictures read and prepare an image the same way.
"""

import concurrent.futures
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from errors import DataError, warn

# What PIL raises for a file that is not a readable image (truncated, corrupt, not an image at all).
IMAGE_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 2-8 mirror or turn the stored pixels for display
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # turned by 90 degrees: width and height trade places
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # PIL opens 16-bit greyscale PNG and TIFF as these


class UnreadableImage(Exception):
    """A file cannot serve as its image; the message says why (for a line that names the file)."""


def read_rgb(path: Path, expected_size: tuple[int, int] | None = None, listed_in: str = "") -> Image.Image:
    """The image at `path` as an 8-bit RGB PIL image, as it is displayed (EXIF orientation applied, as annotation
    tools show it); UnreadableImage if PIL cannot read it, if its mode has no RGB form, or if its displayed
    (width, height) is not `expected_size` (what the annotation file `listed_in` says)."""
    try:
        with Image.open(path) as image:
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            image = _as_rgb(ImageOps.exif_transpose(image) if orientation != 1 else image)
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image file PIL can read") from None
    except IMAGE_READ_ERRORS as e:
        raise UnreadableImage(getattr(e, "strerror", None) or str(e)) from None
    if expected_size is not None and image.size != tuple(expected_size):
        raise UnreadableImage(_size_mismatch(image.size, tuple(expected_size), orientation, listed_in))
    return image


def _as_rgb(image: Image.Image) -> Image.Image:
    """Any mode as 8-bit RGB: 16-bit greyscale scaled as torchvision's to_dtype scales uint16 to uint8 (the high
    byte; PIL's own convert would clip every value above 255 to white), palettes looked up, alpha dropped."""
    if image.mode == "RGB":  # as decoded (convert would copy it)
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise UnreadableImage(
                f"its pixels are 32-bit integers from {pixels.min()} to {pixels.max()}; save it with 8 or 16 bits"
            )
        grey = (pixels.astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if image.mode == "F":
        raise UnreadableImage("its pixels are 32-bit floats (mode F), which have no 8-bit scale; save it with 8 bits")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise UnreadableImage(f"its mode {image.mode} has no RGB conversion ({e}); save it as RGB") from None


def _size_mismatch(displayed: tuple[int, int], listed: tuple[int, int], orientation: int, listed_in: str) -> str:
    (width, height), (listed_width, listed_height) = displayed, listed
    message = f"it is {width}x{height} but {listed_in} says {listed_width}x{listed_height}"
    if orientation in TRANSPOSING_ORIENTATIONS and (height, width) == listed:
        message += (
            f" (its EXIF orientation {orientation} turns the stored {height}x{width} pixels; annotation tools draw the "
            "turned picture, so the annotations were probably made on another copy: re-export the file's sizes)"
        )
    elif orientation != 1:
        message += f" (EXIF orientation {orientation} applied, as annotation tools display it)"
    return message


def displayed_size(path: Path) -> tuple[int, int, int]:
    """An image's displayed (width, height) and EXIF orientation, from its header alone (no decoding)."""
    with Image.open(path) as image:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        width, height = image.size
    return (height, width, orientation) if orientation in TRANSPOSING_ORIENTATIONS else (width, height, orientation)


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
    """Which of the `wanted` images of an annotations.AnnotationTable cannot be used: no file in `folder`, or a
    header that PIL cannot read or whose displayed size is not the listed one (found now, not hours into an
    epoch). A DataError naming the first, unless `skip_missing`, which leaves them out with one warning."""
    missing = _missing_files(folder, table, wanted, skip_missing)
    return missing | _wrong_headers(folder, table, wanted & ~missing, skip_missing)


def _wrong_headers(folder: Path, table, wanted: np.ndarray, skip: bool) -> np.ndarray:
    rows = np.flatnonzero(wanted).tolist()
    headers = read_headers([folder / table.file_names[row] for row in rows])
    wrong = np.zeros(len(table.file_names), dtype=bool)
    first = None
    for row, header in zip(rows, headers):
        width, height = int(table.widths[row]), int(table.heights[row])
        if isinstance(header, str):
            reason = header
        elif header[:2] != (width, height):
            reason = _size_mismatch(header[:2], (width, height), header[2], table.source.name)
        else:
            continue
        wrong[row] = True
        first = first or (row, reason)
    if first is None:
        return wrong
    row, reason = first
    path, count = folder / table.file_names[row], int(wrong.sum())
    if not skip:
        raise DataError(
            f"{path}: cannot use image {table.image_ids[row]} ({reason}); {count} of the {len(rows)} images have such "
            f"a problem: replace the files, fix their entries in {table.source}, or pass --skip-bad-images"
        )
    warn(f"leaving out {count} of the {len(rows)} images listed in {table.source}, e.g. {path}: {reason}")
    return wrong


HEADERS_PER_PROCESS = 4096  # below this many images, one process reads the headers (about 60 us each)


def read_headers(paths: list[Path]) -> list[tuple[int, int, int] | str]:
    """displayed_size() of every path, or why its header cannot be read; in a few processes for many images (118k
    COCO headers take 7 s in one, benchmarks/bench_data_workers.py)."""
    processes = min(os.cpu_count() or 1, 8, len(paths) // HEADERS_PER_PROCESS)
    if processes < 2:
        return _headers(paths)
    chunks = [paths[i : i + HEADERS_PER_PROCESS] for i in range(0, len(paths), HEADERS_PER_PROCESS)]
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        return [header for chunk in pool.map(_headers, chunks) for header in chunk]


def _headers(paths: list[Path]) -> list[tuple[int, int, int] | str]:
    headers = []
    for path in paths:
        try:
            headers.append(displayed_size(path))
        except Image.UnidentifiedImageError:
            headers.append("not an image file PIL can read")
        except IMAGE_READ_ERRORS as e:
            headers.append(getattr(e, "strerror", None) or str(e))
    return headers


def _missing_files(folder: Path, table, wanted: np.ndarray, skip_missing: bool) -> np.ndarray:
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


def images_to_device(images: Iterable[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Copy uint8 images to the device (a quarter of float's bytes), then scale them to [0, 1] there."""
    moved = []
    for image in images:
        image = image.to(device, non_blocking=True)
        moved.append(image.float().div_(255) if image.dtype == torch.uint8 else image.float())
    return moved

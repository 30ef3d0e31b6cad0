"""images.py: image files found with one listing per folder, their headers checked at start-up, and read as the
8-bit RGB picture an annotation tool displays (every PIL mode, EXIF orientation applied)."""

import json

import numpy as np
import pytest
from PIL import Image

import coco_utils
import images


def test_find_missing_files_lists_each_folder_once(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "sub/b.jpg"):
        (tmp_path / name).write_bytes(b"")
    names = ["a.jpg", "sub/b.jpg", "sub/c.jpg", "nowhere/d.jpg", "b.jpg"]
    assert images.find_missing_files(tmp_path, names).tolist() == [False, False, True, True, True]


def _grey_levels(shape=(6, 8)) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape)


def _palette_image() -> Image.Image:
    image = Image.fromarray(_grey_levels().astype(np.uint8) % 4, "P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0, 5, 5, 250] + [0] * (256 * 3 - 12))
    return image


def _rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2).astype(np.uint8)


# Each mode: how to write a file, and the RGB numpy says its own pixel values stand for.
MODES = {
    # 16-bit greyscale, as medical, microscopy and satellite images come: the high byte (torchvision's uint16 scale)
    "I;16 (16-bit PNG)": (
        lambda: Image.fromarray((81 + _grey_levels() * 1200).astype(np.uint16)),
        lambda raw: _rgb(raw.astype(np.uint16) >> 8),
    ),
    "L": (lambda: Image.fromarray(_grey_levels().astype(np.uint8) * 5, "L"), lambda raw: _rgb(raw)),
    "P (palette)": (_palette_image, None),
    "LA": (
        lambda: Image.fromarray(np.stack([_grey_levels() * 5, _grey_levels() * 0 + 7], axis=2).astype(np.uint8), "LA"),
        lambda raw: _rgb(raw[..., 0]),
    ),
    "RGBA": (
        lambda: Image.fromarray((np.arange(6 * 8 * 4).reshape(6, 8, 4) % 251).astype(np.uint8), "RGBA"),
        lambda raw: raw[..., :3],
    ),
    "1 (bilevel)": (lambda: Image.fromarray(_grey_levels() % 3 == 0), lambda raw: _rgb(raw.astype(np.uint8) * 255)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_reads_as_8_bit_rgb_of_the_files_own_values(tmp_path, mode):
    make, expected_of = MODES[mode]
    path = tmp_path / "image.png"
    make().save(path)
    with Image.open(path) as stored:
        raw = np.asarray(stored)
        if expected_of is None:  # a palette: each index's colour
            expected = np.asarray(stored.getpalette(), dtype=np.uint8).reshape(-1, 3)[raw]
        else:
            expected = expected_of(raw)
    image = images.read_rgb(path)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_a_16_bit_image_is_not_read_as_all_white(tmp_path):
    """PIL's convert("RGB") clips I;16 pixels at 255: a file holding 81 to 148 (of 255; x 257 in 16 bits) read as
    white everywhere."""
    path = tmp_path / "scan.png"
    levels = np.linspace(81, 148, 48).round().reshape(6, 8)
    Image.fromarray((levels * 257).astype(np.uint16)).save(path)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
        assert (np.asarray(stored.convert("RGB")) == 255).all()  # what was trained on before
    np.testing.assert_array_equal(np.asarray(images.read_rgb(path)), _rgb(levels))


def test_a_mode_without_an_8_bit_rgb_form_is_one_line_naming_why(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((6, 8), dtype=np.float32)).save(path)
    with pytest.raises(images.UnreadableImage, match="32-bit floats"):
        images.read_rgb(path)


def _oriented_jpeg(path, size: tuple[int, int], orientation: int) -> np.ndarray:
    """A JPEG whose stored pixels have a bright block at their top left, with an EXIF orientation; returns the
    stored pixels as decoded."""
    width, height = size
    pixels = np.full((height, width, 3), 40, dtype=np.uint8)
    pixels[:16, :24] = 230
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        return np.asarray(stored.convert("RGB"))


@pytest.mark.parametrize("size", [(64, 64), (64, 48)], ids=["square", "non-square"])
def test_exif_orientation_gives_the_displayed_picture(tmp_path, size):
    path = tmp_path / "photo.jpg"
    stored = _oriented_jpeg(path, size, orientation=6)  # 6: shown turned 90 degrees clockwise
    displayed = np.asarray(images.read_rgb(path))
    np.testing.assert_array_equal(displayed, np.rot90(stored, k=-1))
    assert displayed[:8, -8:].mean() > 200 and displayed[:8, :8].mean() < 80  # the block is now top right
    assert images.displayed_size(path) == (size[1], size[0], 6)


def _one_image_dataset(root, file_name: str, width: int, height: int):
    data = {
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0, "area": 100}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return coco_utils.CocoDetection(root, root / "ann.json", with_masks=False, remove_images_without_annotations=True)


def test_an_oriented_photo_is_checked_against_its_displayed_size_at_start_up(tmp_path):
    _oriented_jpeg(tmp_path / "photo.jpg", (64, 48), orientation=6)
    image, _ = _one_image_dataset(tmp_path, "photo.jpg", 48, 64)[0]  # the displayed size, as labelme and CVAT write
    assert image.size == (48, 64)
    with pytest.raises(coco_utils.DataError) as error:
        _one_image_dataset(tmp_path, "photo.jpg", 64, 48)  # the stored size: the annotations are not of this picture
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "photo.jpg") in message
    assert "it is 48x64 but ann.json says 64x48 (its EXIF orientation 6 turns the stored 64x48 pixels" in message

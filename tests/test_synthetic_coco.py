"""The synthetic dataset generator: determinism, the quirks it promises, referential integrity."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as mask_utils

import synthetic_coco

SPLITS = ("train", "val")


def load(root: Path, split: str) -> dict:
    with open(root / "annotations" / f"instances_{split}2017.json") as f:
        return json.load(f)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    """The generator's default size (512 + 64 images, about a second): large enough for every quirk."""
    return synthetic_coco.generate(tmp_path_factory.mktemp("synthetic_default"), seed=0)


def test_same_seed_gives_identical_files(synthetic_root, tmp_path):
    again = synthetic_coco.generate(tmp_path / "again", num_train=24, num_val=8, seed=0)
    first, second = all_files(synthetic_root), all_files(again)
    assert len(first) == 24 + 8 + 2
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_gives_different_files(synthetic_root, tmp_path):
    other = synthetic_coco.generate(tmp_path / "other", num_train=24, num_val=8, seed=1)
    first, second = all_files(synthetic_root), all_files(other)
    for split in SPLITS:
        name = str(Path("annotations") / f"instances_{split}2017.json")
        assert first[name] != second[name]
    common = first.keys() & second.keys()
    images = [n for n in common if n.endswith(".jpg")]
    assert images
    assert sum(first[n] != second[n] for n in images) == len(images)


def test_generate_returns_the_root_and_writes_the_layout(tmp_path):
    root = synthetic_coco.generate(tmp_path / "small", num_train=3, num_val=2, seed=5)
    assert root == tmp_path / "small"
    assert len(list((root / "train2017").glob("*.jpg"))) == 3
    assert len(list((root / "val2017").glob("*.jpg"))) == 2
    assert {p.name for p in (root / "annotations").iterdir()} == {"instances_train2017.json", "instances_val2017.json"}


def test_command_line(tmp_path, capsys):
    args = synthetic_coco.get_args_parser().parse_args(
        ["--output", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--seed", "3"]
    )
    synthetic_coco.main(args)
    assert "wrote 2 training and 1 validation images" in capsys.readouterr().out
    assert len(load(tmp_path / "cli", "train")["images"]) == 2
    assert len(load(tmp_path / "cli", "val")["images"]) == 1


# ----------------------------------------------------------------------------- quirks


def annotations(root: Path) -> list[dict]:
    return [a for split in SPLITS for a in load(root, split)["annotations"]]


def test_category_ids_are_not_contiguous(default_root):
    for split in SPLITS:
        ids = sorted(c["id"] for c in load(default_root, split)["categories"])
        assert ids != list(range(1, len(ids) + 1))
        assert ids == sorted(synthetic_coco.CATEGORIES)
    used = {a["category_id"] for a in annotations(default_root)}
    assert used == set(synthetic_coco.CATEGORIES)


def test_crowd_regions_use_uncompressed_rle(default_root):
    crowd = [a for a in annotations(default_root) if a["iscrowd"]]
    assert crowd
    for ann in crowd:
        segmentation = ann["segmentation"]
        assert isinstance(segmentation, dict)
        assert isinstance(segmentation["counts"], list)
        assert all(isinstance(c, int) for c in segmentation["counts"])
        height, width = segmentation["size"]
        assert sum(segmentation["counts"]) == height * width
        binary = mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))
        assert binary.sum() == ann["area"] > 0
        np.testing.assert_allclose(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(binary))), ann["bbox"])


def test_some_segmentations_are_compressed_rle(default_root):
    compressed = [
        a for a in annotations(default_root) if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
    ]
    assert compressed
    for ann in compressed[:20]:
        height, width = ann["segmentation"]["size"]
        assert mask_utils.decode(ann["segmentation"]).shape == (height, width)
        assert mask_utils.area(ann["segmentation"]) == pytest.approx(ann["area"])


def test_some_polygons_have_several_parts(default_root):
    multi = [a for a in annotations(default_root) if isinstance(a["segmentation"], list) and len(a["segmentation"]) > 1]
    single = [a for a in annotations(default_root) if isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1]
    assert multi and single
    assert all(len(part) >= 6 and len(part) % 2 == 0 for a in multi for part in a["segmentation"])


def test_there_is_a_degenerate_box(default_root):
    degenerate = [a for a in annotations(default_root) if a["bbox"][2] == 0 or a["bbox"][3] == 0]
    assert degenerate


def test_grayscale_and_cmyk_jpegs(default_root):
    modes: dict[str, int] = {}
    for split in SPLITS:
        for image in load(default_root, split)["images"]:
            with PIL.Image.open(default_root / f"{split}2017" / image["file_name"]) as f:
                assert f.format == "JPEG"
                assert f.size == (image["width"], image["height"])
                modes[f.mode] = modes.get(f.mode, 0) + 1
    assert modes.get("L", 0) >= 1
    assert modes.get("CMYK", 0) >= 1
    assert modes.get("RGB", 0) > modes["L"]


def test_small_fixture_has_a_grayscale_jpeg(synthetic_root):
    modes = set()
    for path in (synthetic_root / "train2017").iterdir():
        with PIL.Image.open(path) as f:
            modes.add(f.mode)
    assert "L" in modes


@pytest.mark.parametrize("split", SPLITS)
def test_images_without_annotations(default_root, split):
    data = load(default_root, split)
    annotated = {a["image_id"] for a in data["annotations"]}
    empty = [img for img in data["images"] if img["id"] not in annotated]
    assert empty


def test_several_aspect_ratios(default_root):
    sizes = {(img["width"], img["height"]) for img in load(default_root, "train")["images"]}
    assert sizes == set(synthetic_coco.IMAGE_SIZES)


# ----------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("which", ["small", "default"])
def test_references_resolve(which, synthetic_root, default_root):
    root = synthetic_root if which == "small" else default_root
    image_ids_seen: set[int] = set()
    for split in SPLITS:
        data = load(root, split)
        image_ids = [img["id"] for img in data["images"]]
        assert len(set(image_ids)) == len(image_ids)
        assert not image_ids_seen & set(image_ids)  # splits do not share ids
        image_ids_seen |= set(image_ids)
        category_ids = {c["id"] for c in data["categories"]}
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in data["annotations"]:
            assert ann["image_id"] in set(image_ids)
            assert ann["category_id"] in category_ids
        for img in data["images"]:
            assert (root / f"{split}2017" / img["file_name"]).is_file()
        assert "info" in data

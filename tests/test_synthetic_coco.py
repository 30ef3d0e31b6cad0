"""The synthetic dataset generator: determinism, the quirks it promises, referential integrity; and its keypoint
variant."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import synthetic
import synthetic_coco
import synthetic_people
from transforms import COCO_PERSON_KEYPOINT_FLIP_INDICES, COCO_PERSON_KEYPOINT_NAMES, keypoint_flip_indices

SPLITS = ("train", "val")


def load(root: Path, split: str) -> dict:
    with open(root / "annotations" / f"instances_{split}2017.json") as f:
        return json.load(f)


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory) -> Path:
    """The generator's default size (512 + 64 images, about a second): large enough for every quirk."""
    return synthetic.generate(tmp_path_factory.mktemp("synthetic_default"), seed=0)


def test_same_seed_gives_identical_files(synthetic_root, tmp_path):
    again = synthetic.generate(tmp_path / "again", num_train=24, num_val=8, seed=0)
    first, second = all_files(synthetic_root), all_files(again)
    assert len(first) == 24 + 8 + 2
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_gives_different_files(synthetic_root, tmp_path):
    other = synthetic.generate(tmp_path / "other", num_train=24, num_val=8, seed=1)
    first, second = all_files(synthetic_root), all_files(other)
    for split in SPLITS:
        name = str(Path("annotations") / f"instances_{split}2017.json")
        assert first[name] != second[name]
    common = first.keys() & second.keys()
    images = [n for n in common if n.endswith(".jpg")]
    assert images
    assert sum(first[n] != second[n] for n in images) == len(images)


def test_generate_returns_the_root_and_writes_the_layout(tmp_path):
    root = synthetic.generate(tmp_path / "small", num_train=3, num_val=2, seed=5)
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
        assert ids == sorted(synthetic.CATEGORIES)
    used = {a["category_id"] for a in annotations(default_root)}
    assert used == set(synthetic.CATEGORIES)


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
        a
        for a in annotations(default_root)
        if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], str)
    ]
    assert compressed
    for ann in compressed[:20]:
        height, width = ann["segmentation"]["size"]
        assert mask_utils.decode(ann["segmentation"]).shape == (height, width)
        assert mask_utils.area(ann["segmentation"]) == pytest.approx(ann["area"])


def test_some_polygons_have_several_parts(default_root):
    multi = [a for a in annotations(default_root) if isinstance(a["segmentation"], list) and len(a["segmentation"]) > 1]
    single = [
        a for a in annotations(default_root) if isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1
    ]
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
    assert sizes == set(synthetic.IMAGE_SIZES)


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


# ----------------------------------------------------------------------------- keypoint variant

KP = {name: k for k, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}


def load_kp(root: Path, split: str) -> dict:
    with open(root / "annotations" / f"person_keypoints_{split}2017.json") as f:
        return json.load(f)


def keypoints_of(ann: dict) -> np.ndarray:
    return np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)


def kp_annotations(root: Path) -> list[dict]:
    return [a for split in SPLITS for a in load_kp(root, split)["annotations"]]


def test_keypoint_variant_writes_the_coco_layout(synthetic_kp_root):
    assert {p.name for p in (synthetic_kp_root / "annotations").iterdir()} == {
        f"{kind}_{split}2017.json" for kind in ("person_keypoints", "instances") for split in SPLITS
    }
    assert len(list((synthetic_kp_root / "train2017").glob("*.jpg"))) == 24
    assert len(list((synthetic_kp_root / "val2017").glob("*.jpg"))) == 8


@pytest.mark.parametrize("split", SPLITS)
def test_keypoint_files_load_with_pycocotools(synthetic_kp_root, split):
    coco = COCO(str(synthetic_kp_root / "annotations" / f"person_keypoints_{split}2017.json"))
    (category,) = coco.loadCats(coco.getCatIds())
    assert (category["id"], category["name"], category["supercategory"]) == (1, "person", "person")
    assert tuple(category["keypoints"]) == COCO_PERSON_KEYPOINT_NAMES
    assert keypoint_flip_indices(category["keypoints"]) == COCO_PERSON_KEYPOINT_FLIP_INDICES
    assert len(category["skeleton"]) == 19
    assert all(1 <= k <= 17 for pair in category["skeleton"] for k in pair)
    ann_ids = coco.getAnnIds(catIds=[1])
    assert ann_ids
    for ann in coco.loadAnns(ann_ids):
        mask = coco.annToMask(ann)  # the polygon is valid for frPyObjects
        assert mask.sum() == pytest.approx(ann["area"]) and ann["area"] > 0
    # The instances file holds the same images and objects.
    instances = load(synthetic_kp_root, split)
    keypoints = load_kp(synthetic_kp_root, split)
    assert instances["images"] == keypoints["images"]
    assert [(a["id"], a["image_id"], a["bbox"], a["segmentation"]) for a in instances["annotations"]] == [
        (a["id"], a["image_id"], a["bbox"], a["segmentation"]) for a in keypoints["annotations"]
    ]


def test_keypoint_annotations_are_consistent(synthetic_kp_root):
    for split in SPLITS:
        data = load_kp(synthetic_kp_root, split)
        images = {img["id"]: img for img in data["images"]}
        for ann in data["annotations"]:
            assert len(ann["keypoints"]) == 51
            assert (ann["category_id"], ann["iscrowd"]) == (1, 0)
            kps = keypoints_of(ann)
            assert set(kps[:, 2]) <= {0, 1, 2}
            assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
            assert (kps[kps[:, 2] == 0, :2] == 0).all()
            labelled = kps[kps[:, 2] > 0]
            x, y, w, h = ann["bbox"]
            image = images[ann["image_id"]]
            assert (
                (labelled[:, 0] >= x) & (labelled[:, 0] <= x + w) & (labelled[:, 1] >= y) & (labelled[:, 1] <= y + h)
            ).all()
            assert (
                (labelled[:, 0] >= 0)
                & (labelled[:, 0] < image["width"])
                & (labelled[:, 1] >= 0)
                & (labelled[:, 1] < image["height"])
            ).all()
    # The small fixture already has keypoints of all three kinds: visible, occluded, outside the image.
    counts = np.bincount(
        np.concatenate([keypoints_of(a)[:, 2] for a in kp_annotations(synthetic_kp_root)]).astype(int), minlength=3
    )
    assert counts[2] > 10 * counts[1] > 0 and counts[0] > 0


def test_figures_face_the_viewer(synthetic_kp_root):
    """The person's left is on the image's right, so a flip with the left/right swap keeps the rule."""
    pairs = 0
    for ann in kp_annotations(synthetic_kp_root):
        kps = keypoints_of(ann)
        for joint in ("shoulder", "hip"):
            left, right = kps[KP[f"left_{joint}"]], kps[KP[f"right_{joint}"]]
            if left[2] > 0 and right[2] > 0:
                assert left[0] > right[0]
                pairs += 1
    assert pairs > 20


def test_keypoints_lie_on_the_drawn_figures(synthetic_kp_root):
    """The pixel under each visible keypoint is the bright figure, far from the dark plain background (JPEG noise
    allowed)."""
    checked = 0
    for split in SPLITS:
        data = load_kp(synthetic_kp_root, split)
        files = {img["id"]: img["file_name"] for img in data["images"]}
        for ann in data["annotations"]:
            with PIL.Image.open(synthetic_kp_root / f"{split}2017" / files[ann["image_id"]]) as f:
                pixels = np.asarray(f.convert("RGB"), dtype=float)
            background = np.median(pixels.reshape(-1, 3), axis=0)
            for x, y, v in keypoints_of(ann):
                if v == 2:
                    assert np.abs(pixels[int(y), int(x)] - background).max() > 80, (split, ann["id"], x, y)
                    checked += 1
    assert checked > 300


def test_keypoint_variant_same_seed_gives_identical_files(synthetic_kp_root, tmp_path):
    again = synthetic_people.generate_keypoints(tmp_path / "again", num_train=24, num_val=8, seed=0)
    first, second = all_files(synthetic_kp_root), all_files(again)
    assert len(first) == 24 + 8 + 4
    assert first == second
    other = synthetic_people.generate_keypoints(tmp_path / "other", num_train=3, num_val=1, seed=1)
    assert load_kp(other, "train")["annotations"] != load_kp(synthetic_kp_root, "train")["annotations"][:3]


def test_keypoint_training_images_have_enough_keypoints(tmp_path):
    """The reference drops training images with fewer than 10 labelled keypoints; only the every-50th empty image
    goes."""
    root = synthetic_people.generate_keypoints(tmp_path / "fifty", num_train=50, num_val=1, seed=2)
    data = load_kp(root, "train")
    per_image = {img["id"]: 0 for img in data["images"]}
    for ann in data["annotations"]:
        per_image[ann["image_id"]] += ann["num_keypoints"]
    ids = [img["id"] for img in data["images"]]
    assert ids == sorted(ids) and ids != list(range(1, len(ids) + 1))  # sparse, as in COCO
    assert per_image[ids[49]] == 0
    assert all(per_image[i] >= 10 for i in ids[:49])
    persons = [sum(a["image_id"] == i for a in data["annotations"]) for i in ids[:49]]
    assert set(persons) == {1, 2}


def test_keypoint_command_line(tmp_path, capsys):
    args = synthetic_coco.get_args_parser().parse_args(
        ["--keypoints", "--output", str(tmp_path / "cli"), "--num-train", "2", "--num-val", "1", "--seed", "3"]
    )
    synthetic_coco.main(args)
    assert "wrote 2 training and 1 validation images" in capsys.readouterr().out
    assert len(load_kp(tmp_path / "cli", "train")["images"]) == 2
    assert len(load(tmp_path / "cli", "val")["images"]) == 1


# ----------------------------------------------------------------------------- the writer (synthetic.write_split)


def test_write_annotations_writes_json_dump_s_text_a_batch_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "JSON_BATCH", 3)  # 7 annotations: three batches
    images = [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 2}]
    anns = [{"id": i, "image_id": 1, "bbox": [0.5, 1.25, 2.0, 1.0], "segmentation": [[0, 0, 1, 1.5]]} for i in range(7)]
    categories = [{"id": 3, "name": "x"}]
    info = {"description": "d"}
    path = tmp_path / "a.json"
    synthetic.write_annotations(path, images, iter(anns), categories, info=info, licenses=[])
    expected = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": categories}
    assert path.read_text() == json.dumps(expected)
    synthetic.write_annotations(path, [], [], categories)  # without info and licenses, nothing annotated
    assert path.read_text() == json.dumps({"images": [], "annotations": [], "categories": categories})


def test_write_split_saves_pictures_links_files_and_lists_images_again(tmp_path):
    linked = tmp_path / "photo.jpg"
    PIL.Image.new("RGB", (6, 4), (200, 10, 10)).save(linked)
    images = [
        ({"id": 1, "file_name": "drawn.jpg", "width": 5, "height": 3}, PIL.Image.new("L", (5, 3), 128)),
        ({"id": 2, "file_name": "linked.jpg", "width": 6, "height": 4}, linked),
        ({"id": 3, "file_name": "drawn.jpg", "width": 5, "height": 3}, None),  # the first file, listed again
    ]
    anns = [{"id": 9, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    entries = synthetic.write_split(tmp_path / "root", "val", images, anns, [{"id": 1, "name": "a"}], kind="k")
    assert entries == [entry for entry, _ in images]
    folder = tmp_path / "root" / "val2017"
    assert sorted(p.name for p in folder.iterdir()) == ["drawn.jpg", "linked.jpg"]
    assert (folder / "linked.jpg").resolve() == linked.resolve()
    with PIL.Image.open(folder / "drawn.jpg") as image:
        assert (image.mode, image.size) == ("L", (5, 3))
    data = json.loads((tmp_path / "root" / "annotations" / "k_val2017.json").read_text())
    assert data == {"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}

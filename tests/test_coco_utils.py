"""CocoDetection, mask decoding and the evaluation ground truth, on the synthetic and the hand-written dataset."""

import contextlib
import dataclasses
import gc
import io
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Subset, TensorDataset
from torchvision import tv_tensors

import coco_utils
import labels
import synthetic
import synthetic_people
from conftest import find_ann, is_polygon, load_json, pycoco
from errors import UsageError
from transforms import get_transform


def expected_target(coco: COCO, image_id: int) -> tuple[torch.Tensor, list[int], np.ndarray]:
    """What the target should hold, computed from pycocotools: non-crowd annotations with a non-empty clamped box."""
    info = coco.imgs[image_id]
    width, height = info["width"], info["height"]
    boxes, labels, masks = [], [], []
    for ann in coco.imgToAnns[image_id]:
        if ann["iscrowd"]:
            continue
        x, y, w, h = ann["bbox"]
        x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
        x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
        if x1 > x0 and y1 > y0:
            boxes.append([x0, y0, x1, y1])
            labels.append(ann["category_id"])
            masks.append(coco.annToMask(ann))
    masks_array = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels, masks_array


# ----------------------------------------------------------------------------- mask decoding


# ----------------------------------------------------------------------------- targets


@pytest.mark.parametrize("split", ["train", "val"])
def test_targets_match_pycocotools(any_root, split):
    ds = coco_utils.get_coco(any_root, split, transforms=None)
    coco = pycoco(any_root, split)
    for index in range(len(ds)):
        image, target = ds[index]
        image_id = ds.ids[index]
        boxes, labels, masks = expected_target(coco, image_id)
        assert target["image_id"] == image_id
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
        assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
        assert tuple(target["boxes"].canvas_size) == (image.height, image.width)
        assert target["boxes"].dtype == torch.float32
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), boxes)
        assert target["labels"].dtype == torch.int64
        assert target["labels"].tolist() == labels
        assert isinstance(target["masks"], tv_tensors.Mask)
        assert target["masks"].dtype == torch.bool  # as the reference's; indexing them is 30x faster than uint8
        np.testing.assert_array_equal(target["masks"].numpy(), masks)


def test_crowd_annotations_left_out_of_targets(any_root):
    data = load_json(any_root, "val")
    crowd = find_ann(data, lambda a: a["iscrowd"] == 1)
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    index = ds.ids.index(crowd["image_id"])
    _, target = ds[index]
    non_crowd = [
        a for a in data["annotations"] if a["image_id"] == crowd["image_id"] and not a["iscrowd"] and a["bbox"][2] > 0
    ]
    assert len(target["boxes"]) == len(non_crowd) == len(target["masks"]) == len(target["labels"])
    x, y, w, h = crowd["bbox"]
    crowd_box = torch.tensor([x, y, x + w, y + h])
    assert not any(torch.allclose(box, crowd_box) for box in target["boxes"].as_subclass(torch.Tensor))


def test_crowd_left_out_quirky(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    _, target = ds[ds.ids.index(999)]  # a crowd region (44) and a triangle (44)
    assert target["labels"].tolist() == [44]
    assert target["boxes"].tolist() == [[5.0, 5.0, 35.0, 30.0]]
    assert target["masks"].shape == (1, 90, 90)
    assert target["masks"][0, 60, 60] == 0  # inside the crowd ellipse
    assert target["masks"][0, 10, 20] == 1  # inside the triangle


def test_degenerate_box_dropped_with_its_mask(quirky_root):
    data = load_json(quirky_root, "val")
    coco = pycoco(quirky_root, "val")
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    anns = [a for a in data["annotations"] if a["image_id"] == 2000003]
    assert [a["bbox"][2] for a in anns][1] == 0.0
    _, target = ds[ds.ids.index(2000003)]
    assert target["labels"].tolist() == [1, 44]
    assert target["boxes"].shape == (2, 4)
    assert target["masks"].shape == (2, 80, 100)
    np.testing.assert_array_equal(target["masks"][0].numpy(), coco.annToMask(anns[0]))
    np.testing.assert_array_equal(target["masks"][1].numpy(), coco.annToMask(anns[2]))


def _one_image_target(tmp_path: Path, anns: list[dict], height: int, width: int) -> dict:
    """The target CocoDetection gives for one image of the given size holding `anns` (category ids as labels)."""
    (tmp_path / "images").mkdir()
    PIL.Image.new("RGB", (width, height)).save(tmp_path / "images" / "one.jpg")
    data = {
        "images": [{"id": 1, "file_name": "one.jpg", "width": width, "height": height}],
        "annotations": [{"id": i + 1, "image_id": 1, "iscrowd": 0, **ann} for i, ann in enumerate(anns)],
        "categories": [{"id": c, "name": f"c{c}"} for c in sorted({a["category_id"] for a in anns})],
    }
    (tmp_path / "one.json").write_text(json.dumps(data))
    return coco_utils.CocoDetection(tmp_path / "images", tmp_path / "one.json")[0][1]


def test_degenerate_boxes_dropped_by_hand(tmp_path):
    anns = [
        {"bbox": [2, 2, 0, 5], "category_id": 1, "segmentation": [[2, 2, 2, 4, 2, 7]]},
        {"bbox": [2, 2, 4, 4], "category_id": 3, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        {"bbox": [3, 3, 4, 0], "category_id": 5, "segmentation": [[3, 3, 5, 3, 7, 3]]},
        {"bbox": [25, 1, 4, 4], "category_id": 7, "segmentation": [[25, 1, 29, 1, 29, 5]]},  # wholly right of the image
    ]
    target = _one_image_target(tmp_path, anns, height=10, width=20)
    assert target["labels"].tolist() == [3]
    assert target["boxes"].tolist() == [[2.0, 2.0, 6.0, 6.0]]
    assert target["masks"].shape == (1, 10, 20)
    assert target["masks"][0, 3:6, 3:6].all()


def test_boxes_converted_to_xyxy_and_clamped(tmp_path):
    anns = [
        {"bbox": [-5.0, -3.0, 10.0, 10.0], "category_id": 2, "segmentation": []},
        {"bbox": [15.5, 8.25, 10.0, 10.0], "category_id": 4, "segmentation": []},
        {"bbox": [1.5, 2.0, 3.25, 4.5], "category_id": 6, "segmentation": []},
    ]
    target = _one_image_target(tmp_path, anns, height=12, width=20)
    assert target["boxes"].tolist() == [[0.0, 0.0, 5.0, 7.0], [15.5, 8.25, 20.0, 12.0], [1.5, 2.0, 4.75, 6.5]]
    assert target["labels"].tolist() == [2, 4, 6]
    assert not target["masks"].any()  # empty segmentations decode to empty masks


def test_box_running_off_the_image_is_clamped(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "train", transforms=None)
    _, target = ds[ds.ids.index(987654)]  # 100x80, second box is [80, 60, 30, 30]
    assert target["boxes"].tolist() == [[10.0, 10.0, 70.0, 50.0], [80.0, 60.0, 100.0, 80.0]]


def test_no_annotations_gives_empty_target(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    _, target = ds[ds.ids.index(1750000)]
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 80, 100)


def test_without_masks(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None, with_masks=False)
    _, target = ds[0]
    assert "masks" not in target
    assert len(target["boxes"]) == 2


# ----------------------------------------------------------------------------- splits and metadata


def usable_image_ids(data: dict) -> list[int]:
    usable = {a["image_id"] for a in data["annotations"] if not a["iscrowd"] and a["bbox"][2] > 1 and a["bbox"][3] > 1}
    return [img["id"] for img in data["images"] if img["id"] in usable]


def test_train_split_drops_images_without_usable_annotations(any_root):
    data = load_json(any_root, "train")
    ds = coco_utils.get_coco(any_root, "train", transforms=None)
    assert ds.ids == usable_image_ids(data)
    assert len(ds) == len(ds.ids)


def test_train_split_drops_exactly_the_unusable_quirky_images(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "train", transforms=None)
    # dropped: 77 (degenerate and one-pixel boxes), 300000 (no annotation), 4242 (crowd only)
    assert ds.ids == [987654, 12, 500001]


def test_val_split_keeps_every_image(any_root):
    data = load_json(any_root, "val")
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    assert ds.ids == [img["id"] for img in data["images"]]


def test_val_split_keeps_quirky_images_in_file_order(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=None)
    assert ds.ids == [2000003, 1500000, 999, 1750000]


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_images_become_rgb(any_root, mode):
    found = 0
    for split in ("train", "val"):
        ds = coco_utils.get_coco(any_root, split, transforms=None)
        eval_ds = coco_utils.get_coco(any_root, split, transforms=get_transform(train=False))
        for index, info in enumerate(ds.images):
            with PIL.Image.open(ds.img_folder / info["file_name"]) as raw:
                if raw.mode != mode:
                    continue
            found += 1
            image, _ = ds[index]
            assert image.mode == "RGB"
            assert image.size == (info["width"], info["height"])
            tensor, _ = eval_ds[index]
            assert tensor.dtype == torch.uint8
            assert tensor.shape == (3, info["height"], info["width"])
            if mode == "L":
                assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])
    assert found, f"the fixture has no {mode} JPEG"


def test_quirky_fixture_has_its_quirks(quirky_root):
    for split in ("train", "val"):
        data = load_json(quirky_root, split)
        assert "info" not in data
        ids = [img["id"] for img in data["images"]]
        assert ids != sorted(ids)
    modes = {}
    for split in ("train", "val"):
        for path in sorted((quirky_root / f"{split}2017").iterdir()):
            with PIL.Image.open(path) as image:
                modes[image.mode] = modes.get(image.mode, 0) + 1
    assert modes.get("L", 0) >= 1 and modes.get("CMYK", 0) >= 1


def test_num_classes_is_max_category_id_plus_one(synthetic_root, quirky_root):
    assert coco_utils.get_coco(synthetic_root, "train", None).num_classes == 18
    assert coco_utils.get_coco(quirky_root, "val", None).num_classes == 45
    assert coco_utils.get_coco(quirky_root, "val", None).categories == {1: "person", 3: "car", 44: "bottle"}


@pytest.mark.parametrize("leave_out", [True, False])
def test_a_category_no_annotation_uses_is_named_and_left_out_of_auto_labels(exported_root, leave_out, capsys):
    """Roboflow lists its supercategory as category 0, which no annotation uses."""
    folder = exported_root / "train"
    ds = coco_utils.get_coco(
        None, "train", None, img_folder=folder, ann_file=folder / "_annotations.coco.json", contiguous_labels=True,
        leave_out_unused_categories=leave_out,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "no annotation uses category 0 (shapes)" in err
    if leave_out:
        assert ds.label_to_category_id == [0, 1, 2, 3, 4] and "left out of the labels" in err
    else:
        assert ds.label_to_category_id == [0, 0, 1, 2, 3, 4] and "keeps an output" in err
    _, target = ds[0]
    assert target["labels"].min() >= 1 and target["labels"].max() <= ds.num_classes - 1


def test_aspect_ratios_come_from_metadata(any_root, monkeypatch):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)

    def no_open(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(PIL.Image, "open", no_open)
    with pytest.raises(AssertionError, match="an image was opened"):
        ds[0]  # the patch is in force
    data = load_json(any_root, "val")
    assert ds.aspect_ratios == [img["width"] / img["height"] for img in data["images"]]
    assert len(set(ds.aspect_ratios)) > 1


def test_quirky_aspect_ratios(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "train", transforms=None)
    assert ds.aspect_ratios == [100 / 80, 72 / 120, 1.0]


# ----------------------------------------------------------------------------- ground truth for evaluation


def raising_transforms(image, target):
    raise AssertionError("get_coco_api_from_dataset ran the dataset")


def coco_content(coco: COCO) -> tuple[list[int], list[int]]:
    return sorted(coco.imgs), sorted(coco.anns)


def test_coco_api_full_val_dataset(any_root):
    ds = coco_utils.get_coco(any_root, "val", transforms=raising_transforms)
    data = load_json(any_root, "val")
    coco = coco_utils.get_coco_api_from_dataset(ds)
    assert sorted(coco.imgs) == sorted(img["id"] for img in data["images"])
    assert sorted(coco.anns) == sorted(a["id"] for a in data["annotations"])  # crowd regions included
    assert sorted(coco.cats) == sorted(c["id"] for c in data["categories"])


def test_coco_api_full_train_dataset_holds_only_kept_images(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "train", transforms=raising_transforms)
    data = load_json(quirky_root, "train")
    coco = coco_utils.get_coco_api_from_dataset(ds)
    assert sorted(coco.imgs) == sorted(ds.ids) == [12, 500001, 987654]
    assert sorted(coco.anns) == sorted(a["id"] for a in data["annotations"] if a["image_id"] in set(ds.ids))
    assert sorted(coco.cats) == [1, 3, 44]


def test_coco_api_subset(any_root):
    ds = coco_utils.get_coco(any_root, "val", transforms=raising_transforms)
    data = load_json(any_root, "val")
    subset = Subset(ds, [2, 0])
    coco = coco_utils.get_coco_api_from_dataset(subset)
    keep = {ds.ids[2], ds.ids[0]}
    assert sorted(coco.imgs) == sorted(keep)
    expected_anns = sorted(a["id"] for a in data["annotations"] if a["image_id"] in keep)
    assert expected_anns
    assert sorted(coco.anns) == expected_anns
    assert sorted(coco.cats) == sorted(c["id"] for c in data["categories"])
    assert all(ann["image_id"] in keep for ann in coco.dataset["annotations"])
    # the full dataset's ground truth is not touched
    assert sorted(ds.coco.imgs) == sorted(img["id"] for img in data["images"])


def test_coco_api_nested_subset(any_root):
    ds = coco_utils.get_coco(any_root, "val", transforms=raising_transforms)
    data = load_json(any_root, "val")
    nested = Subset(Subset(ds, [3, 1, 2]), [2, 0])  # base indices 2 and 3
    coco = coco_utils.get_coco_api_from_dataset(nested)
    keep = {ds.ids[2], ds.ids[3]}
    assert sorted(coco.imgs) == sorted(keep)
    assert sorted(coco.anns) == sorted(a["id"] for a in data["annotations"] if a["image_id"] in keep)


def test_coco_api_subset_of_everything_equals_full(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "val", transforms=raising_transforms)
    full = coco_utils.get_coco_api_from_dataset(ds)
    subset = coco_utils.get_coco_api_from_dataset(Subset(ds, list(range(len(ds)))))
    assert coco_content(subset) == coco_content(full)


def test_coco_api_rejects_other_datasets():
    plain = TensorDataset(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="TensorDataset"):
        coco_utils.get_coco_api_from_dataset(plain)
    with pytest.raises(TypeError, match="TensorDataset"):
        coco_utils.get_coco_api_from_dataset(Subset(Subset(plain, [0, 1]), [1]))


# ----------------------------------------------------------------------------- compact storage


def test_image_records_match_the_annotation_file(any_root):
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    data = load_json(any_root, "val")
    expected = [{k: img[k] for k in ("id", "file_name", "width", "height")} for img in data["images"]]
    assert list(ds.images) == expected
    assert ds.images[-1] == expected[-1] and ds.images[1:3] == expected[1:3]
    with pytest.raises(IndexError):
        ds.images[len(expected)]
    with pytest.raises(IndexError):
        ds[len(ds)]


def _reachable_objects(root_object) -> int:
    """How many distinct Python objects hang off `root_object`: what a forked worker's reference counting can touch."""
    seen, stack = set(), [root_object]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if not isinstance(obj, Path):  # a path's cached parts grow with its depth, not with the dataset
            stack.extend(gc.get_referents(obj))
    return len(seen)


def test_dataset_state_does_not_grow_with_the_number_of_images(synthetic_root, tmp_path):
    """Per-image metadata lives in arrays, not in Python objects that forked workers would copy (pytorch #13246)."""
    larger = synthetic.generate(tmp_path / "larger", num_train=72, num_val=2, seed=1)
    small = coco_utils.get_coco(synthetic_root, "train", transforms=None)
    large = coco_utils.get_coco(larger, "train", transforms=None)
    assert len(large) > 2 * len(small)
    assert _reachable_objects(vars(large)) == _reachable_objects(vars(small))


def test_training_never_builds_the_pycocotools_index(quirky_root, monkeypatch):
    def no_index(*args, **kwargs):
        raise AssertionError("a pycocotools index was built")

    monkeypatch.setattr(coco_utils, "COCO", no_index)
    ds = coco_utils.get_coco(quirky_root, "train", transforms=get_transform(train=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=lambda batch: batch)
    assert sum(len(batch) for batch in loader) == len(ds) == 3


# ----------------------------------------------------------------------------- bad input at start-up


def _replace(key: str, value):
    return lambda data: {**data, key: value}


def _without(key: str):
    return lambda data: {k: v for k, v in data.items() if k != key}


def _set_annotation(index: int, **fields):
    return lambda data: data["annotations"][index].update(fields)


def _drop_field(kind: str, index: int, field: str):
    def change(data):
        del data[kind][index][field]

    return change


def _duplicate(kind: str):
    def change(data):
        data[kind][1]["id"] = data[kind][0]["id"]

    return change


def _tiny_boxes(data):
    for ann in data["annotations"]:
        ann["bbox"][2] = 1.0


# (split, change to the annotation dict, fragments the one-line message must hold)
BAD_ANNOTATION_FILES = {
    "results list": (
        "val",
        lambda d: [{"image_id": 999, "category_id": 44, "bbox": [1, 2, 3, 4], "score": 0.9}],
        ["holds a JSON list"],
    ),
    "no annotations": (
        "val",
        _without("annotations"),
        ['has no "annotations" list', "needs images, annotations and categories"],
    ),
    "no categories": ("val", _without("categories"), ['has no "categories" list']),
    "no images": ("train", _without("images"), ['has no "images" list']),
    "unknown image_id": (
        "val",
        _set_annotation(1, image_id=424242),
        ["annotation id 907013 refers to image_id 424242", "images list"],
    ),
    "unknown category_id": (
        "val",
        _set_annotation(1, category_id=99),
        ["annotation id 907013 refers to category_id 99"],
    ),
    "bbox of 3 numbers": (
        "val",
        _set_annotation(1, bbox=[1, 2, 3]),
        ["annotation id 907013 (annotations[1]) has a bad bbox", "4 numbers"],
    ),
    "bbox with a string": (
        "val",
        _set_annotation(2, bbox=[1, 2, "3", 4]),
        ["annotation id 907026 (annotations[2]) has a bad bbox"],
    ),
    "annotation without category": (
        "val",
        lambda d: d["annotations"][0].pop("category_id") and None,
        ['907000 (annotations[0]) lacks "category_id"'],
    ),
    "image without width": (
        "val",
        _drop_field("images", 2, "width"),
        ['image id 999 (images[2]) lacks "width"', "file_name, width and height"],
    ),
    "image without file_name": (
        "train",
        _drop_field("images", 0, "file_name"),
        ['image id 987654 (images[0]) lacks "file_name"'],
    ),
    "image id a string": (
        "val",
        lambda d: d["images"][0].update(id="2000003"),
        ["image id 2000003 (images[0]) id: Expected `int`, got `str`"],
    ),
    "duplicate image ids": ("val", _duplicate("images"), ["image id 2000003 appears more than once"]),
    "duplicate annotation ids": ("val", _duplicate("annotations"), ["annotation id 907000 appears more than once"]),
    "empty categories": ("val", _replace("categories", []), ["has an empty categories list"]),
    "zero width": (
        "val",
        lambda d: d["images"][0].update(width=0),
        ["image id 2000003 (img_2000003.jpg) is 0x80", "must be positive"],
    ),
    "segmentation not a list or object": (
        "val",
        _set_annotation(0, segmentation=None),
        ["annotation id 907000 has segmentation null"],
    ),
    "nothing to train on": (
        "train",
        _tiny_boxes,
        ["none of its 6 images has a usable annotation", "nothing to train on"],
    ),
    "no image listed": ("val", lambda d: d.update(images=[], annotations=[]), ["lists no images"]),
}


def _assert_one_line_naming(error: pytest.ExceptionInfo, path: Path, fragments: list[str]) -> None:
    message = str(error.value)
    assert isinstance(error.value, UsageError)
    assert "\n" not in message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("case", list(BAD_ANNOTATION_FILES))
def test_bad_annotation_file_is_one_line_naming_it(case, quirky_copy, edit_annotations):
    split, change, fragments = BAD_ANNOTATION_FILES[case]
    path = edit_annotations(quirky_copy, split, change)
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, split, transforms=None)
    _assert_one_line_naming(error, path, fragments)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("this is not json", "is not valid JSON (JSON is malformed"),
        (None, "is not valid JSON (Input data was truncated)"),
    ],
    ids=["not JSON", "cut short"],
)
def test_annotation_file_that_is_not_json(quirky_copy, content, fragment):
    path = quirky_copy / "annotations" / "instances_val2017.json"
    path.write_text(content if content is not None else path.read_text()[:300])
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(error, path, [fragment])


def test_annotation_path_that_is_a_folder(quirky_copy):
    path = quirky_copy / "annotations" / "instances_val2017.json"
    path.unlink()
    path.mkdir()
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(error, path, ["is a folder"])


def test_missing_image_file_is_found_at_start_up(quirky_copy):
    (quirky_copy / "val2017" / "img_999.jpg").unlink()
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(
        error,
        quirky_copy / "val2017" / "img_999.jpg",
        ["is missing (image id 999; 1 of the 4 images listed in", "--skip-bad-images"],
    )


def test_missing_file_of_a_dropped_training_image_does_not_matter(quirky_copy):
    (quirky_copy / "train2017" / "img_77.jpg").unlink()  # image 77 has no usable box: never read in training
    assert coco_utils.get_coco(quirky_copy, "train", transforms=None).ids == [987654, 12, 500001]


def test_empty_image_folder(quirky_copy):
    for path in (quirky_copy / "val2017").iterdir():
        path.unlink()
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(error, quirky_copy / "val2017", ["holds none of the 4 images listed in", "--data-path"])


@pytest.mark.parametrize("layout", ["missing", "a file", "empty folder", "images folder is a file"])
def test_data_path_that_is_not_a_coco_layout(quirky_copy, tmp_path, layout):
    root = {"missing": tmp_path / "nowhere", "a file": tmp_path / "file.txt", "empty folder": tmp_path / "empty"}.get(
        layout, quirky_copy
    )
    (tmp_path / "file.txt").write_text("")
    (tmp_path / "empty").mkdir()
    if layout == "images folder is a file":
        shutil.rmtree(quirky_copy / "val2017")
        (quirky_copy / "val2017").write_text("")
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(root, "val", transforms=None)
    _assert_one_line_naming(error, root, ["--data-path: ", "should hold train2017/, val2017/"])


# ----------------------------------------------------------------------------- bad images met while loading


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:400])


def test_a_truncated_image_is_reported_when_met(quirky_copy):
    """Its header is whole, so start-up cannot tell; the first read does."""
    path = quirky_copy / "val2017" / "img_999.jpg"
    _truncate(path)
    ds = coco_utils.get_coco(quirky_copy, "val", transforms=None)  # start-up reads headers only
    ds[0]
    with pytest.raises(coco_utils.DataError) as error:
        ds[ds.ids.index(999)]
    _assert_one_line_naming(error, path, ["cannot use image 999 (image file is truncated", "--skip-bad-images"])


def _not_an_image(root: Path, edit_annotations) -> None:
    (root / "val2017" / "img_999.jpg").write_text("not a jpeg")


def _another_size(root: Path, edit_annotations) -> None:
    edit_annotations(root, "val", lambda d: d["images"][2].update(width=91))  # image 999 is 90x90


AT_START_UP = {
    "not an image": (_not_an_image, "cannot use image 999 (not an image file PIL can read)"),
    "another size": (_another_size, "cannot use image 999 (it is 90x90 but instances_val2017.json says 91x90)"),
}


@pytest.mark.parametrize("case", list(AT_START_UP))
def test_an_unreadable_or_mis_sized_image_is_found_at_start_up_from_its_header(quirky_copy, edit_annotations, case):
    damage, reason = AT_START_UP[case]
    damage(quirky_copy, edit_annotations)
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(error, quirky_copy / "val2017" / "img_999.jpg", [reason, "--skip-bad-images"])


def test_skip_bad_images_leaves_images_with_bad_headers_out_at_start_up(quirky_copy, edit_annotations, capsys):
    _another_size(quirky_copy, edit_annotations)
    ds = coco_utils.get_coco(quirky_copy, "val", transforms=None, skip_bad_images=True)
    assert 999 not in ds.ids and len(ds) == 3
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "leaving out 1 of the 4 images" in err and "91x90" in err


def test_rle_of_another_size_than_its_image(quirky_copy, edit_annotations):
    path = edit_annotations(quirky_copy, "val", lambda d: d["annotations"][3]["segmentation"].update(size=[60, 72]))
    ds = coco_utils.get_coco(quirky_copy, "val", transforms=None)
    with pytest.raises(coco_utils.DataError) as error:
        ds[ds.ids.index(1500000)]
    _assert_one_line_naming(
        error, path, ["annotation id 907039 has a segmentation that cannot be drawn", "[60, 72]", "[120, 72]"]
    )
    assert (
        len(
            coco_utils.get_coco(quirky_copy, "val", transforms=None, with_masks=False)[ds.ids.index(1500000)][1][
                "boxes"
            ]
        )
        == 2
    )


def test_bad_image_raised_in_a_worker_still_reads_as_one_line(quirky_copy):
    _truncate(quirky_copy / "val2017" / "img_999.jpg")
    ds = coco_utils.get_coco(quirky_copy, "val", transforms=None)
    with pytest.raises(coco_utils.DataError) as direct:
        ds[ds.ids.index(999)]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=lambda batch: batch)
    with pytest.raises(coco_utils.DataError) as through_worker:
        list(loader)
    assert str(through_worker.value) == str(direct.value)


def test_skip_bad_images_substitutes_the_next_readable_image(quirky_copy, capsys):
    bad_path = quirky_copy / "train2017" / "img_12.jpg"
    _truncate(bad_path)
    ds = coco_utils.get_coco(quirky_copy, "train", transforms=None, skip_bad_images=True)
    clean = coco_utils.get_coco(quirky_copy, "train", transforms=None, with_masks=True)
    bad = ds.ids.index(12)
    image, target = ds[bad]
    expected_image, expected_target = clean[bad + 1]
    assert target["image_id"] == ds.ids[bad + 1]
    assert image.tobytes() == expected_image.tobytes()
    assert torch.equal(target["masks"], expected_target["masks"])
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping") and str(bad_path) in warnings[0]
    ds[bad]
    assert capsys.readouterr().err == ""  # once per file
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=lambda batch: batch)
    assert [len(batch) for batch in loader] == [2, 1]


def test_skip_bad_images_wraps_around_to_the_first_image(quirky_copy):
    _truncate(quirky_copy / "train2017" / "img_500001.jpg")  # the last training image
    ds = coco_utils.get_coco(quirky_copy, "train", transforms=None, skip_bad_images=True)
    assert ds[len(ds) - 1][1]["image_id"] == ds.ids[0]


def test_skip_bad_images_leaves_missing_files_out(quirky_copy, capsys):
    (quirky_copy / "train2017" / "img_12.jpg").unlink()
    ds = coco_utils.get_coco(quirky_copy, "train", transforms=None, skip_bad_images=True)
    assert ds.ids == [987654, 500001]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "img_12.jpg" in warnings[0] and "leaving out 1 of the 3 images" in warnings[0]


def test_skip_bad_images_with_no_readable_image_left(quirky_copy):
    for name in ("img_987654.jpg", "img_12.jpg", "img_500001.jpg"):
        _truncate(quirky_copy / "train2017" / name)
    ds = coco_utils.get_coco(quirky_copy, "train", transforms=None, skip_bad_images=True)
    with pytest.raises(coco_utils.DataError, match=r"none of the \d images"):  # a header cut short: left out at once
        ds[0]


def test_polygon_only_dataset_is_packed_and_draws_the_same_masks(quirky_copy, edit_annotations):
    """Without RLE, segmentations are held two characters a byte; the masks must not change."""
    edit_annotations(quirky_copy, "val", lambda d: d.update(annotations=[a for a in d["annotations"] if is_polygon(a)]))
    ds = coco_utils.get_coco(quirky_copy, "val", transforms=None)
    assert ds._segmentations.packed
    coco = pycoco(quirky_copy, "val")
    for index in range(len(ds)):
        _, target = ds[index]
        np.testing.assert_array_equal(target["masks"].numpy(), expected_target(coco, ds.ids[index])[2])


def test_data_path_pointing_inside_the_coco_root(quirky_copy):
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy / "val2017", "val", transforms=None)
    _assert_one_line_naming(error, quirky_copy, ["val2017/ is a folder inside a COCO root: pass " + str(quirky_copy)])


def test_file_names_that_repeat_the_image_folder(quirky_copy, edit_annotations):
    def prefix(data):
        for image in data["images"]:
            image["file_name"] = "val2017/" + image["file_name"]

    path = edit_annotations(quirky_copy, "val", prefix)
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(error, path, ["file_name val2017/img_2000003.jpg is relative to", "remove the folder from"])


# ----------------------------------------------------------------------------- keypoints (--dataset coco_kp)


def kp_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"person_keypoints_{split}2017.json"


def edit_kp_file(root: Path, split: str, change) -> Path:
    path = kp_file(root, split)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def kp_copy(synthetic_kp_root, tmp_path) -> Path:
    """A private copy of the synthetic keypoint dataset, for a test to edit."""
    return Path(shutil.copytree(synthetic_kp_root, tmp_path / "kp_copy"))


@pytest.mark.parametrize("split", ["train", "val"])
def test_keypoint_targets_are_the_annotation_files_keypoints(synthetic_kp_root, split):
    ds = coco_utils.get_coco(synthetic_kp_root, split, transforms=None, dataset="coco_kp")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(kp_file(synthetic_kp_root, split)))
    assert ds.keypoint_names == coco.cats[1]["keypoints"] == list(synthetic_people.COCO_PERSON_KEYPOINT_NAMES)
    assert ds.keypoint_skeleton == coco.cats[1]["skeleton"] and ds.keypoint_skeleton
    assert (ds.label_to_category_id, ds.num_classes) == ([0, 1], 2)
    people = 0
    for index in range(len(ds)):
        _, target = ds[index]
        image_id = target["image_id"]
        boxes, labels, masks = expected_target(coco, image_id)
        anns = coco.imgToAnns[image_id]
        # so every one is in the target
        assert all(not a["iscrowd"] and a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in anns)
        expected = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(-1, 17, 3)
        keypoints = target["keypoints"]
        assert keypoints.dtype == torch.float32 and keypoints.shape == (len(anns), 17, 3)
        assert torch.equal(keypoints, expected)
        assert target["labels"].tolist() == labels == [1] * len(anns)  # person
        torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), boxes)
        np.testing.assert_array_equal(target["masks"].numpy(), masks)
        people += len(anns)
    assert people > len(ds)  # some images hold two people
    visibilities = {v for a in coco.dataset["annotations"] for v in a["keypoints"][2::3]}
    assert visibilities == {0, 1, 2}  # unlabelled, labelled but hidden, and visible keypoints all occur


def _leave_labelled(ann: dict, count: int, occluded: int = 0) -> None:
    """Keep the first `count` labelled keypoints of `ann` (the first `occluded` of them as v=1), the rest 0, 0, 0."""
    kept = 0
    for i in range(0, len(ann["keypoints"]), 3):
        if ann["keypoints"][i + 2] > 0 and kept < count:
            ann["keypoints"][i + 2] = 1 if kept < occluded else 2
            kept += 1
        else:
            ann["keypoints"][i : i + 3] = [0, 0, 0]
    assert kept == count, "the fixture's person has too few labelled keypoints"
    ann["num_keypoints"] = count


def test_keypoint_training_split_drops_images_with_fewer_than_10_labelled_keypoints(kp_copy):
    data = json.loads(kp_file(kp_copy, "train").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    two_people = [i for i, anns in by_image.items() if len(anns) == 2]
    one_person = [i for i, anns in by_image.items() if len(anns) == 1]
    nine, ten, nine_of_two = one_person[0], one_person[1], two_people[0]
    before = coco_utils.get_coco(kp_copy, "train", transforms=None, dataset="coco_kp").ids
    assert {nine, ten, nine_of_two} <= set(before)

    def change(data):
        anns = {a["id"]: a for a in data["annotations"]}
        _leave_labelled(anns[by_image[nine][0]["id"]], 9)
        _leave_labelled(anns[by_image[ten][0]["id"]], 10, occluded=4)  # v=1 (labelled, not visible) counts too
        _leave_labelled(anns[by_image[nine_of_two][0]["id"]], 5)
        _leave_labelled(anns[by_image[nine_of_two][1]["id"]], 4)  # 9 over the image's two people

    path = edit_kp_file(kp_copy, "train", change)
    train = coco_utils.get_coco(kp_copy, "train", transforms=None, dataset="coco_kp")
    assert train.ids == [i for i in before if i not in (nine, nine_of_two)]
    # Evaluation keeps every image, whatever its keypoints; so does a detection dataset of the same images.
    as_val = coco_utils.get_coco(
        kp_copy, "val", transforms=None, dataset="coco_kp", img_folder=kp_copy / "train2017", ann_file=path
    )
    assert {nine, ten, nine_of_two} <= set(as_val.ids)
    _, target = as_val[as_val.ids.index(nine)]
    assert int((target["keypoints"][..., 2] > 0).sum()) == 9
    # instances_*: no keypoint rule
    assert {nine, nine_of_two} <= set(coco_utils.get_coco(kp_copy, "train", transforms=None).ids)


def test_class_names_of_a_keypoint_dataset(synthetic_kp_root):
    dataset = coco_utils.get_coco(synthetic_kp_root, "val", transforms=None, dataset="coco_kp", with_masks=False)
    names = dataclasses.asdict(dataset.classes)
    assert names["label_to_category_id"] == [0, 1]
    assert names["categories"] == [{"id": 1, "name": "person"}]
    assert (
        names["keypoint_names"] == list(synthetic_people.COCO_PERSON_KEYPOINT_NAMES)
        and len(names["keypoint_names"]) == 17
    )
    assert names["keypoint_skeleton"] == synthetic_people.PERSON_CATEGORY["skeleton"]
    json.dumps(names)  # plain data, as a checkpoint keeps it


def _drop_keypoint_names(data):
    for category in data["categories"]:
        del category["keypoints"]


def _cut_keypoints(data):
    data["annotations"][1]["keypoints"] = data["annotations"][1]["keypoints"][:-3]


def _no_keypoints(data):
    del data["annotations"][1]["keypoints"]


BAD_KEYPOINT_FILES = {
    "categories name no keypoints": (
        _drop_keypoint_names,
        ['no category lists "keypoints" names', "--dataset coco_kp reads"],
    ),
    "48 keypoint numbers": (
        _cut_keypoints,
        ["has 48 keypoint numbers", "needs 51 numbers (x, y, visibility for each of"],
    ),
    "no keypoints": (_no_keypoints, ["has no keypoints", "needs 51 numbers"]),
}


@pytest.mark.parametrize("case", list(BAD_KEYPOINT_FILES))
def test_bad_keypoint_file_is_one_line_naming_it(case, kp_copy):
    change, fragments = BAD_KEYPOINT_FILES[case]
    path = edit_kp_file(kp_copy, "val", change)
    data = json.loads(path.read_text())
    if case != "categories name no keypoints":
        fragments = [f"annotation id {data['annotations'][1]['id']} ", *fragments]
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(kp_copy, "val", transforms=None, dataset="coco_kp")
    _assert_one_line_naming(error, path, fragments)


def test_an_instances_file_is_not_a_keypoint_file(synthetic_root):
    path = synthetic_root / "annotations" / "instances_val2017.json"
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(
            synthetic_root, "val", None, dataset="coco_kp", img_folder=synthetic_root / "val2017", ann_file=path
        )
    _assert_one_line_naming(error, path, ['no category lists "keypoints" names', "person_keypoints_*.json"])


def test_keypoint_dataset_on_a_root_without_person_keypoints_files(synthetic_root):
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(synthetic_root, "train", transforms=None, dataset="coco_kp")
    _assert_one_line_naming(
        error,
        synthetic_root / "annotations" / "person_keypoints_train2017.json",
        ["--data-path: ", "is missing", "person_keypoints_*2017"],
    )


# ----------------------------------------------------------------------------- label mapping


def test_label_to_category_ids():
    assert labels.label_to_category_ids([17, 2, 11, 5], contiguous=True) == [0, 2, 5, 11, 17]
    assert labels.label_to_category_ids([17, 2, 11, 5], contiguous=False) == list(range(18))
    assert (
        labels.label_to_category_ids([], contiguous=True) == labels.label_to_category_ids([], contiguous=False) == [0]
    )


@pytest.mark.parametrize("split", ["train", "val"])
def test_contiguous_labels_number_the_categories_in_id_order(synthetic_root, split):
    contiguous = coco_utils.get_coco(synthetic_root, split, transforms=None, contiguous_labels=True)
    identity = coco_utils.get_coco(synthetic_root, split, transforms=None)
    assert (contiguous.label_to_category_id, contiguous.num_classes) == ([0, 2, 5, 11, 17], 5)
    assert (identity.label_to_category_id, identity.num_classes) == (list(range(18)), 18)
    coco = pycoco(synthetic_root, split)
    assert contiguous.ids == identity.ids
    seen = set()
    for index in range(len(contiguous)):
        _, target = contiguous[index]
        _, same = identity[index]
        expected_labels = expected_target(coco, target["image_id"])[1]
        assert same["labels"].tolist() == expected_labels  # labels are the category ids
        assert [contiguous.label_to_category_id[label] for label in target["labels"].tolist()] == expected_labels
        assert torch.equal(target["boxes"], same["boxes"]) and torch.equal(target["masks"], same["masks"])
        seen |= set(target["labels"].tolist())
    assert seen == {1, 2, 3, 4}
    assert dataclasses.asdict(contiguous.classes) == {
        "label_to_category_id": [0, 2, 5, 11, 17],
        "categories": [
            {"id": 2, "name": "disc"},
            {"id": 5, "name": "square"},
            {"id": 11, "name": "triangle"},
            {"id": 17, "name": "bars"},
        ],
        "keypoint_names": [],
        "keypoint_skeleton": [],
    }


def test_a_given_label_mapping_labels_the_second_split(synthetic_root):
    train = coco_utils.get_coco(synthetic_root, "train", transforms=None, contiguous_labels=True)
    val = coco_utils.get_coco(synthetic_root, "val", transforms=None, label_to_category_id=train.label_to_category_id)
    assert val.label_to_category_id == [0, 2, 5, 11, 17] and val.num_classes == 5
    # Any order, and categories the file does not list: the given mapping wins over contiguous_labels and the file.
    mapping = [0, 17, 11, 5, 2, 23]
    shuffled = coco_utils.get_coco(
        synthetic_root, "val", transforms=None, contiguous_labels=True, label_to_category_id=mapping
    )
    assert shuffled.label_to_category_id == mapping and shuffled.num_classes == 6
    coco = pycoco(synthetic_root, "val")
    for index in range(len(shuffled)):
        _, target = shuffled[index]
        assert [mapping[label] for label in target["labels"].tolist()] == expected_target(coco, target["image_id"])[1]
        assert [mapping.index(c) for c in expected_target(coco, target["image_id"])[1]] == target["labels"].tolist()


def test_a_category_missing_from_a_given_mapping_is_one_line_naming_the_file(synthetic_root):
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(synthetic_root, "val", transforms=None, label_to_category_id=[0, 2, 5, 11])
    path = synthetic_root / "annotations" / "instances_val2017.json"
    _assert_one_line_naming(
        error, path, ["category id 17 (bars) is not among the model's categories (ids [2, 5, 11])", "same categories"]
    )


def _person_is_category_0(data):
    for item in [*data["categories"], *data["annotations"]]:
        key = "id" if "name" in item else "category_id"
        if item[key] == 1:
            item[key] = 0


def test_category_id_0_needs_contiguous_labels(quirky_copy, edit_annotations):
    path = edit_annotations(quirky_copy, "val", _person_is_category_0)
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(quirky_copy, "val", transforms=None)
    _assert_one_line_naming(
        error, path, ["category id 0 (person) would be label 0", "background", "--label-mapping contiguous"]
    )
    ds = coco_utils.get_coco(quirky_copy, "val", transforms=None, contiguous_labels=True)
    assert ds.label_to_category_id == [0, 0, 3, 44]
    _, target = ds[ds.ids.index(1500000)]  # an RLE car (3), then a polygon person (0)
    assert target["labels"].tolist() == [2, 1]


# ----------------------------------------------------------------------------- own data (--train-images, ...)


def own_copy(root: Path, dest: Path) -> Path:
    """A dataset's files outside the 2017 layout: dest/{train,val}/pics/ and dest/{train,val}/labels.json."""
    for split in ("train", "val"):
        shutil.copytree(root / f"{split}2017", dest / split / "pics")
        shutil.copy(root / "annotations" / f"instances_{split}2017.json", dest / split / "labels.json")
    return dest


@pytest.fixture
def own_layout(synthetic_root, tmp_path) -> Path:
    return own_copy(synthetic_root, tmp_path / "mine")


@pytest.mark.parametrize("split", ["train", "val"])
def test_own_image_folder_and_annotation_file_load_as_the_2017_layout(any_root, tmp_path, split):
    own_layout = own_copy(any_root, tmp_path / "mine")
    layout = coco_utils.get_coco(any_root, split, transforms=None)
    own = coco_utils.get_coco(
        tmp_path / "nowhere",
        split,
        transforms=None,
        img_folder=own_layout / split / "pics",
        ann_file=own_layout / split / "labels.json",
    )
    assert own.img_folder == own_layout / split / "pics" and own.ann_file == own_layout / split / "labels.json"
    assert own.ids == layout.ids  # with the training split's rules: quirky's train split drops 3 of its 6 images
    assert own.label_to_category_id == layout.label_to_category_id
    for index in range(len(own)):
        image, target = own[index]
        expected_image, expected = layout[index]
        assert image.tobytes() == expected_image.tobytes()
        assert target["image_id"] == expected["image_id"]
        assert torch.equal(target["labels"], expected["labels"]) and torch.equal(target["boxes"], expected["boxes"])
        assert torch.equal(target["masks"], expected["masks"])


OWN_PATH_ERRORS = {
    "annotation file missing": ("train", "images", "gone.json", "--train-annotations: {ann} does not exist"),
    "annotation file is a folder": ("train", "images", "pics", "--train-annotations: {ann} is a folder"),
    "image folder missing": ("val", "nowhere", "labels.json", "--val-images: {img} does not exist"),
    "image folder is a file": ("val", "labels.json", "labels.json", "--val-images: {img} is a file"),
}


@pytest.mark.parametrize("case", list(OWN_PATH_ERRORS))
def test_own_paths_that_are_wrong_name_their_flag(own_layout, case):
    split, images, annotations, expected = OWN_PATH_ERRORS[case]
    img_folder = own_layout / split / ("pics" if images == "images" else images)
    ann_file = own_layout / split / annotations
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.get_coco(own_layout, split, transforms=None, img_folder=img_folder, ann_file=ann_file)
    message = str(error.value)
    assert "\n" not in message and message.startswith(expected.format(ann=ann_file, img=img_folder)), message


# ----------------------------------------------------------------------------- degenerate polygons, box-only exports


def _polygon_file(root: Path, segmentations: list) -> Path:
    """One 64x64 image with an annotation per segmentation, each with a 20x20 box."""
    PIL.Image.new("RGB", (64, 64), (90, 90, 90)).save(root / "a.jpg")
    annotations = [
        {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 20, 20], "iscrowd": 0, "segmentation": seg}
        for i, seg in enumerate(segmentations)
    ]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}], "annotations": annotations}
    data["categories"] = [{"id": 1, "name": "thing"}]
    (root / "ann.json").write_text(json.dumps(data))
    return root / "ann.json"


SQUARE = [20, 20, 40, 20, 40, 40, 20, 40]


def test_polygon_parts_of_fewer_than_3_points_are_dropped_as_pycocotools_drops_them(tmp_path, capsys):
    ann_file = _polygon_file(tmp_path, [[SQUARE, [10, 10, 20, 20]], [SQUARE, [5, 5]]])
    ds = coco_utils.CocoDetection(tmp_path, ann_file, require_masks=True)
    assert capsys.readouterr().out.strip() == (
        f"Note: {ann_file}: dropped 2 polygon parts of fewer than 3 points (in 2 annotations), as pycocotools and "
        "detectron2 do"
    )
    _, target = ds[0]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([SQUARE], 64, 64)))
    for mask in target["masks"]:
        np.testing.assert_array_equal(mask.numpy(), expected)


@pytest.mark.parametrize(
    "segmentation", [[], [[10, 10, 20, 20]], [[10, 10]]], ids=["box-only export", "2 points", "1 point"]
)
def test_a_mask_model_refuses_annotations_left_without_a_mask(tmp_path, segmentation):
    ann_file = _polygon_file(tmp_path, [[SQUARE], segmentation, segmentation])
    with pytest.raises(coco_utils.DataError) as error:
        coco_utils.CocoDetection(tmp_path, ann_file, require_masks=True)
    _assert_one_line_naming(
        error, ann_file, ["2 of the 3 annotations a mask model trains on have no mask (e.g. annotation id 2", "a box-"]
    )
    ds = coco_utils.CocoDetection(tmp_path, ann_file, with_masks=False)  # a box-only model trains on them
    assert len(ds[0][1]["boxes"]) == 3

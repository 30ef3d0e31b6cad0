"""CocoDetection, mask decoding and the evaluation ground truth, on the synthetic and the hand-written dataset."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from pycocotools.coco import COCO
from torch.utils.data import Subset, TensorDataset
from torchvision import tv_tensors

import coco_utils
from transforms import get_transform


def load_json(root: Path, split: str) -> dict:
    with open(root / "annotations" / f"instances_{split}2017.json") as f:
        return json.load(f)


def pycoco(root: Path, split: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


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


def find_ann(data: dict, predicate) -> dict:
    matches = [a for a in data["annotations"] if predicate(a)]
    assert matches, "the fixture lacks an annotation the test needs"
    return matches[0]


def image_size(data: dict, image_id: int) -> tuple[int, int]:
    info = next(img for img in data["images"] if img["id"] == image_id)
    return info["height"], info["width"]


def is_polygon(ann: dict) -> bool:
    return isinstance(ann["segmentation"], list)


# ----------------------------------------------------------------------------- mask decoding


@pytest.mark.parametrize("parts", ["single", "multi"])
def test_polygon_masks_match_pycocotools(any_root, parts):
    coco = pycoco(any_root, "val")
    anns = [a for a in coco.dataset["annotations"] if is_polygon(a) and (len(a["segmentation"]) > 1) == (parts == "multi")]
    anns = [a for a in anns if a["bbox"][2] > 0]  # degenerate polygons draw nothing
    assert anns, f"no {parts}-part polygon in the fixture"
    for ann in anns:
        info = coco.imgs[ann["image_id"]]
        decoded = coco_utils.decode_masks([ann["segmentation"]], info["height"], info["width"])
        expected = coco.annToMask(ann)
        assert decoded.shape == (1, info["height"], info["width"])
        assert decoded.dtype == np.uint8
        assert expected.sum() > 0
        np.testing.assert_array_equal(decoded[0], expected)


def test_multi_part_polygon_covers_both_parts(quirky_root):
    data = load_json(quirky_root, "val")
    ann = find_ann(data, lambda a: is_polygon(a) and len(a["segmentation"]) == 2)
    height, width = image_size(data, ann["image_id"])
    mask = coco_utils.decode_masks([ann["segmentation"]], height, width)[0]
    # the rectangle part spans x 10..30, the triangle part x 50..70, with nothing in between
    assert mask[20:30, 15:25].all()
    assert mask[25:30, 58:62].all()
    assert not mask[:, 35:45].any()


@pytest.mark.parametrize("counts_type", [str, list], ids=["compressed", "uncompressed"])
def test_rle_decoding(any_root, counts_type):
    coco = pycoco(any_root, "val")
    anns = [
        a
        for a in coco.dataset["annotations"]
        if isinstance(a["segmentation"], dict) and isinstance(a["segmentation"]["counts"], counts_type)
    ]
    assert anns, f"no {counts_type.__name__} RLE counts in the fixture"
    for ann in anns:
        info = coco.imgs[ann["image_id"]]
        rle = coco_utils.segmentation_to_rle(ann["segmentation"], info["height"], info["width"])
        assert isinstance(rle["counts"], (bytes, str))  # pycocotools' compressed form
        decoded = coco_utils.decode_masks([ann["segmentation"]], info["height"], info["width"])[0]
        np.testing.assert_array_equal(decoded, coco.annToMask(ann))
        assert decoded.sum() > 0
        if counts_type is list:
            assert decoded.sum() == ann["area"]  # the area the run lengths were written from


def test_uncompressed_rle_decoding_by_hand():
    # 3x2 image, column-major runs: 1 zero, 3 ones, 2 zeros
    mask = coco_utils.decode_masks([{"size": [3, 2], "counts": [1, 3, 2]}], 3, 2)[0]
    np.testing.assert_array_equal(mask, np.array([[0, 1], [1, 0], [1, 0]], dtype=np.uint8))


def test_polygon_parts_with_fewer_than_three_points_are_ignored():
    square = [1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0]
    with_junk = coco_utils.decode_masks([[square, [2.0, 2.0, 3.0, 3.0]]], 8, 8)[0]
    alone = coco_utils.decode_masks([[square]], 8, 8)[0]
    np.testing.assert_array_equal(with_junk, alone)
    assert alone.sum() > 0
    assert coco_utils.segmentation_to_rle([[1.0, 1.0, 2.0, 2.0]], 8, 8) is None
    assert not coco_utils.decode_masks([[[1.0, 1.0, 2.0, 2.0]]], 8, 8).any()


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
        assert target["masks"].dtype == torch.uint8
        np.testing.assert_array_equal(target["masks"].numpy(), masks)


def test_crowd_annotations_left_out_of_targets(any_root):
    data = load_json(any_root, "val")
    crowd = find_ann(data, lambda a: a["iscrowd"] == 1)
    ds = coco_utils.get_coco(any_root, "val", transforms=None)
    index = ds.ids.index(crowd["image_id"])
    _, target = ds[index]
    non_crowd = [a for a in data["annotations"] if a["image_id"] == crowd["image_id"] and not a["iscrowd"] and a["bbox"][2] > 0]
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


def test_degenerate_boxes_dropped_by_hand():
    anns = [
        {"bbox": [2, 2, 0, 5], "category_id": 1, "segmentation": [[2, 2, 2, 4, 2, 7]]},
        {"bbox": [2, 2, 4, 4], "category_id": 3, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]},
        {"bbox": [3, 3, 4, 0], "category_id": 5, "segmentation": [[3, 3, 5, 3, 7, 3]]},
        {"bbox": [25, 1, 4, 4], "category_id": 7, "segmentation": [[25, 1, 29, 1, 29, 5]]},  # wholly right of the image
    ]
    target = coco_utils.annotations_to_target(anns, image_id=5, height=10, width=20)
    assert target["labels"].tolist() == [3]
    assert target["boxes"].tolist() == [[2.0, 2.0, 6.0, 6.0]]
    assert target["masks"].shape == (1, 10, 20)
    assert target["masks"][0, 3:6, 3:6].all()


def test_boxes_converted_to_xyxy_and_clamped():
    anns = [
        {"bbox": [-5.0, -3.0, 10.0, 10.0], "category_id": 2, "segmentation": []},
        {"bbox": [15.5, 8.25, 10.0, 10.0], "category_id": 4, "segmentation": []},
        {"bbox": [1.5, 2.0, 3.25, 4.5], "category_id": 6, "segmentation": []},
    ]
    target = coco_utils.annotations_to_target(anns, image_id=1, height=12, width=20)
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

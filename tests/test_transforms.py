"""The train and eval pipelines on real dataset samples."""

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

import coco_utils
from transforms import DATA_AUGMENTATIONS, get_transform


def plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor)


def reference_sample(root, split="train", index=0):
    ds = coco_utils.get_coco(root, split, transforms=None)
    image, target = ds[index]
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return ds, pixels, target


def assert_plain_outputs(image, target):
    assert type(image) is torch.Tensor
    assert image.dtype == torch.uint8
    assert image.ndim == 3 and image.shape[0] == 3
    assert type(target["boxes"]) is torch.Tensor
    assert type(target["masks"]) is torch.Tensor
    assert type(target["labels"]) is torch.Tensor
    assert target["boxes"].dtype == torch.float32
    assert target["masks"].dtype == torch.bool
    assert target["labels"].dtype == torch.int64


def test_train_transform_flips_image_boxes_and_masks_together(any_root):
    ds, pixels, reference = reference_sample(any_root)
    width = pixels.shape[-1]
    boxes = plain(reference["boxes"])
    flipped_boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    outcomes = set()
    transform = get_transform(train=True)
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transform(*ds[0])
        assert_plain_outputs(image, target)
        assert image.shape == pixels.shape
        assert target["image_id"] == reference["image_id"]
        assert torch.equal(target["labels"], reference["labels"])
        if torch.equal(image, pixels):
            outcomes.add("kept")
            assert torch.equal(target["boxes"], boxes)
            assert torch.equal(target["masks"], plain(reference["masks"]))
        else:
            outcomes.add("flipped")
            assert torch.equal(image, pixels.flip(-1))
            torch.testing.assert_close(target["boxes"], flipped_boxes)
            assert torch.equal(target["masks"], plain(reference["masks"]).flip(-1))
    assert outcomes == {"kept", "flipped"}


def test_flip_moves_a_known_box(quirky_root):
    ds = coco_utils.get_coco(quirky_root, "train", transforms=get_transform(train=True))
    index = ds.ids.index(987654)  # 100 px wide; boxes [10, 10, 70, 50] and [80, 60, 100, 80]
    flipped = None
    for seed in range(20):
        torch.manual_seed(seed)
        _, target = ds[index]
        if target["boxes"].tolist() != [[10.0, 10.0, 70.0, 50.0], [80.0, 60.0, 100.0, 80.0]]:
            flipped = target
            break
    assert flipped is not None, "the flip never fired"
    assert flipped["boxes"].tolist() == [[30.0, 10.0, 90.0, 50.0], [0.0, 60.0, 20.0, 80.0]]
    # the two-part polygon: its rectangle part (x 10..30) is now at x 70..90
    assert flipped["masks"][0, 20:30, 72:88].all()
    assert not flipped["masks"][0, 20:30, 12:28].any()


def test_seeded_train_transform_is_reproducible(synthetic_root):
    ds = coco_utils.get_coco(synthetic_root, "train", transforms=get_transform(train=True))
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        results.append([ds[i] for i in range(4)])
    for (image_a, target_a), (image_b, target_b) in zip(*results):
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a["boxes"], target_b["boxes"])


def test_train_transform_drops_boxes_smaller_than_one_pixel():
    image = tv_tensors.Image(torch.zeros(3, 10, 20, dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes([[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 2.5, 8.0]], format="XYXY", canvas_size=(10, 20)),
        "labels": torch.tensor([3, 7]),
        "masks": tv_tensors.Mask(torch.stack([torch.ones(10, 20, dtype=torch.uint8), torch.zeros(10, 20, dtype=torch.uint8)])),
        "image_id": 4,
    }
    _, out = get_transform(train=True)(image, target)
    assert out["labels"].tolist() == [3]
    assert out["boxes"].shape == (1, 4)
    assert out["masks"].shape == (1, 10, 20)
    assert out["masks"].all()


@pytest.mark.parametrize("split", ["train", "val"])
def test_eval_transform_is_deterministic_and_keeps_geometry(any_root, split):
    raw = coco_utils.get_coco(any_root, split, transforms=None)
    ds = coco_utils.get_coco(any_root, split, transforms=get_transform(train=False))
    for index in range(min(len(ds), 5)):
        image, reference = raw[index]
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            out_image, out_target = ds[index]
            assert_plain_outputs(out_image, out_target)
            assert torch.equal(out_image, pixels)
            assert torch.equal(out_target["boxes"], plain(reference["boxes"]))
            assert torch.equal(out_target["masks"], plain(reference["masks"]))
            assert torch.equal(out_target["labels"], reference["labels"])
            assert out_target["image_id"] == reference["image_id"]


def test_unknown_augmentation_raises():
    assert "hflip" in DATA_AUGMENTATIONS
    with pytest.raises(ValueError, match="lsj"):
        get_transform(train=True, data_augmentation="lsj")
    get_transform(train=False, data_augmentation="lsj")  # evaluation has no augmentation to choose

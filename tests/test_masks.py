"""masks.py: COCO segmentations decoded as pycocotools decodes them; masks encoded, and Mask R-CNN's masks pasted
and encoded, byte for byte as torchvision's paste_masks_in_image plus pycocotools' encoder; unpasted_masks."""

import numpy as np
import pytest
import torch
import torchvision
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from conftest import find_ann, image_size, is_polygon, load_json, model_like_masks, pycoco, pycocotools_rles
from masks import (
    _size_groups,
    decode_masks,
    encode_masks,
    paste_masks_to_rles,
    rle_counts,
    segmentation_to_rle,
    unpasted_masks,
)

# ----------------------------------------------------------------------------- decoding COCO segmentations


@pytest.mark.parametrize("parts", ["single", "multi"])
def test_polygon_masks_match_pycocotools(any_root, parts):
    coco = pycoco(any_root, "val")
    anns = [
        a for a in coco.dataset["annotations"] if is_polygon(a) and (len(a["segmentation"]) > 1) == (parts == "multi")
    ]
    anns = [a for a in anns if a["bbox"][2] > 0]  # degenerate polygons draw nothing
    assert anns, f"no {parts}-part polygon in the fixture"
    for ann in anns:
        info = coco.imgs[ann["image_id"]]
        decoded = decode_masks([ann["segmentation"]], info["height"], info["width"])
        expected = coco.annToMask(ann)
        assert decoded.shape == (1, info["height"], info["width"])
        assert decoded.dtype == np.uint8
        assert expected.sum() > 0
        np.testing.assert_array_equal(decoded[0], expected)


def test_multi_part_polygon_covers_both_parts(quirky_root):
    data = load_json(quirky_root, "val")
    ann = find_ann(data, lambda a: is_polygon(a) and len(a["segmentation"]) == 2)
    height, width = image_size(data, ann["image_id"])
    mask = decode_masks([ann["segmentation"]], height, width)[0]
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
        rle = segmentation_to_rle(ann["segmentation"], info["height"], info["width"])
        assert isinstance(rle["counts"], (bytes, str))  # pycocotools' compressed form
        decoded = decode_masks([ann["segmentation"]], info["height"], info["width"])[0]
        np.testing.assert_array_equal(decoded, coco.annToMask(ann))
        assert decoded.sum() > 0
        if counts_type is list:
            assert decoded.sum() == ann["area"]  # the area the run lengths were written from


def test_uncompressed_rle_decoding_by_hand():
    # 3x2 image, column-major runs: 1 zero, 3 ones, 2 zeros
    mask = decode_masks([{"size": [3, 2], "counts": [1, 3, 2]}], 3, 2)[0]
    np.testing.assert_array_equal(mask, np.array([[0, 1], [1, 0], [1, 0]], dtype=np.uint8))


def test_polygon_parts_with_fewer_than_three_points_are_ignored():
    square = [1.0, 1.0, 6.0, 1.0, 6.0, 6.0, 1.0, 6.0]
    with_junk = decode_masks([[square, [2.0, 2.0, 3.0, 3.0]]], 8, 8)[0]
    alone = decode_masks([[square]], 8, 8)[0]
    np.testing.assert_array_equal(with_junk, alone)
    assert alone.sum() > 0
    assert segmentation_to_rle([[1.0, 1.0, 2.0, 2.0]], 8, 8) is None
    assert not decode_masks([[[1.0, 1.0, 2.0, 2.0]]], 8, 8).any()


@pytest.mark.parametrize("density", [0.0, 0.002, 0.3, 0.97, 1.0])
def test_rle_decoding_matches_pycocotools_on_random_masks(density):
    rng = np.random.default_rng(int(density * 1000))
    for height, width in [(1, 1), (7, 3), (120, 72), (480, 640)]:
        binary = (rng.random((height, width)) < density).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(binary))
        np.testing.assert_array_equal(decode_masks([rle], height, width)[0], binary)
        runs = rle_counts(rle["counts"])
        assert runs.sum() == height * width and (runs[1:] > 0).all()


def test_rle_decoding_matches_pycocotools_on_random_polygons():
    """Shapes from specks to most of the image (long runs take several 5-bit chunks, and differences go negative)."""
    rng = np.random.default_rng(0)
    height, width = 480, 640
    for _ in range(60):
        vertices = int(rng.integers(3, 40))
        radius = float(np.exp(rng.uniform(np.log(1), np.log(400))))
        angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
        xs = rng.uniform(0, width) + radius * rng.uniform(0.3, 1, vertices) * np.cos(angles)
        ys = rng.uniform(0, height) + radius * rng.uniform(0.3, 1, vertices) * np.sin(angles)
        polygon = np.round(np.stack([xs, ys], axis=1).ravel(), 2).tolist()
        expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], height, width)))
        np.testing.assert_array_equal(decode_masks([[polygon]], height, width)[0], expected)


def test_rle_that_does_not_cover_its_image_is_refused():
    with pytest.raises(ValueError, match="cover 5 pixels, not the image's 6"):
        decode_masks([{"size": [3, 2], "counts": [1, 3, 1]}], 3, 2)


# ----------------------------------------------------------------------------- encoding masks as COCO RLE


def tricky_binary_masks(height: int, width: int, seed: int) -> np.ndarray:
    """Masks whose runs cross columns, touch every border, fill whole columns, or are empty."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((12, height, width), dtype=bool)
    masks[1] = True  # everything
    masks[2, :, 3:5] = True  # full-height columns: one run across the column boundary
    masks[3, 0, 0] = masks[3, -1, -1] = True  # single pixels in opposite corners
    masks[4, -2:, :] = True  # bottom rows: a run per column
    masks[5, :, -1] = True  # last column only
    masks[6, 5:9, 2:7] = True
    masks[7] = rng.random((height, width)) < 0.5  # noise: many short runs
    masks[8, 0, :] = True  # top row
    masks[9, :, 0] = True
    masks[9, height // 2, width // 2] = True
    masks[10] = rng.random((height, width)) < 0.02
    masks[11, 2:, width // 2] = True  # from row 2 to the bottom of one column, the next one empty
    return masks


@pytest.mark.parametrize("size", [(11, 9), (1, 5), (7, 1), (40, 64)])
def test_encode_masks_matches_pycocotools_byte_for_byte(size):
    height, width = size
    binary = tricky_binary_masks(height, width, seed=height * width)
    probabilities = np.where(binary, 0.75, 0.25).astype(np.float32)
    assert encode_masks(torch.from_numpy(probabilities)[:, None]) == pycocotools_rles(binary)


def test_encode_masks_thresholds_above_the_threshold():
    probs = torch.tensor([[[[0.2, 0.51], [0.5, 0.9]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    rles = encode_masks(probs)
    decoded = [mask_utils.decode({"size": [2, 2], "counts": counts}) for counts in rles]
    np.testing.assert_array_equal(decoded[0], np.array([[0, 1], [0, 1]], dtype=np.uint8))
    assert decoded[1].sum() == 0
    assert encode_masks(torch.zeros(0, 1, 2, 2)) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("image_size", [(96, 128), (120, 72)])
def test_pasted_masks_match_torchvision_paste_then_pycocotools(seed, image_size):
    height, width = image_size
    masks, boxes = model_like_masks(60, height, width, seed)
    if seed == 2:
        masks = torch.rand(masks.shape, generator=torch.Generator().manual_seed(seed))  # noise: edges everywhere
    full = paste_masks_in_image(masks, boxes, image_size)[:, 0]
    reference = pycocotools_rles((full > 0.5).numpy())
    ours = paste_masks_to_rles(masks, boxes, image_size)
    assert len(ours) == len(reference) == 60
    assert_only_rounding_differs(ours, full)
    assert sum(a == b for a, b in zip(ours, reference)) >= 59


def assert_only_rounding_differs(ours: list[bytes], full: torch.Tensor) -> None:
    """Our masks against torchvision's pasted probabilities thresholded: any pixel that differs lies
    within float rounding of 0.5 (a wrong change would flip whole runs of pixels far from it)."""
    height, width = full.shape[-2:]
    for counts, probabilities in zip(ours, full.numpy()):
        differ = mask_utils.decode({"size": [height, width], "counts": counts}).astype(bool) != (probabilities > 0.5)
        assert not differ.any() or np.abs(probabilities[differ] - 0.5).max() < 1e-6


@pytest.mark.parametrize("kind", ["all on the threshold", "stripes of 0 and 1", "saturated noise"])
def test_masks_on_the_threshold_differ_by_rounding_at_most(kind):
    """Probabilities of exactly 0.5, or pasted to exactly 0.5 between 0 and 1 (as an untrained or a
    saturated model gives them): no change of value can be inferred there, every pixel is computed."""
    _, boxes = model_like_masks(40, 60, 80, seed=4)
    if kind == "all on the threshold":
        masks = torch.full((40, 1, 28, 28), 0.5)
    elif kind == "stripes of 0 and 1":
        masks = (torch.arange(28) % 2).float().expand(40, 1, 28, 28).contiguous()
    else:
        masks = (torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    full = paste_masks_in_image(masks, boxes, (60, 80))[:, 0]
    assert_only_rounding_differs(paste_masks_to_rles(masks, boxes, (60, 80)), full)


def test_paste_handles_no_masks_and_boxes_of_no_width():
    assert paste_masks_to_rles(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (10, 12)) == []
    masks = torch.ones(2, 1, 28, 28)
    boxes = torch.tensor([[3.0, 4.0, 3.0, 4.0], [12.0, 0.0, 12.0, 10.0]])  # a point; a line on the right border
    expected = pycocotools_rles((paste_masks_in_image(masks, boxes, (10, 12))[:, 0] > 0.5).numpy())
    assert paste_masks_to_rles(masks, boxes, (10, 12)) == expected
    on_the_edge_only = boxes[1:].repeat(2, 1)  # no box covers any pixel
    empty = pycocotools_rles(np.zeros((2, 10, 12), dtype=bool))
    assert paste_masks_to_rles(masks, on_the_edge_only, (10, 12)) == empty


def test_size_groups_cover_every_crop_once_with_bounded_padding():
    rng = np.random.default_rng(0)
    widths, heights = rng.integers(0, 300, 100).tolist(), rng.integers(0, 300, 100).tolist()
    groups = _size_groups(widths, heights, waste=2.0, slack=1000)
    assert sorted(i for g in groups for i in g) == list(range(100))
    for group in groups[:-1]:
        padded = len(group) * max(widths[i] for i in group) * (max(heights[i] for i in group) + 1)
        assert len(group) == 1 or padded <= 2.0 * sum(widths[i] * (heights[i] + 1) for i in group) + 1000


# ----------------------------------------------------------------------------- the model's masks left unpasted


def tiny_mask_rcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "maskrcnn_tiny_fpn",  # the tests' small Mask R-CNN (tests/tiny_models.py): the same heads and transform
        weights=None,
        weights_backbone=None,
        num_classes=3,
        min_size=64,
        max_size=96,
        box_score_thresh=0.0,
    )
    return model.eval()


@pytest.mark.slow
def test_unpasted_masks_keeps_the_models_masks_small_and_restores_it():
    model = tiny_mask_rcnn()
    images = [torch.rand(3, 70, 90), torch.rand(3, 50, 64)]
    with torch.inference_mode():
        pasted = model(images)
        with unpasted_masks(model):
            raw = model(images)
        again = model(images)
    assert "postprocess" not in vars(model.transform)
    for full, small, image, after in zip(pasted, raw, images, again):
        assert len(small["boxes"]) > 0
        assert small["raw_masks"].shape == (len(small["boxes"]), 1, 28, 28) and "masks" not in small
        assert small["image_size"] == tuple(image.shape[-2:])
        torch.testing.assert_close(small["boxes"], full["boxes"], rtol=0, atol=0)
        torch.testing.assert_close(
            paste_masks_in_image(small["raw_masks"], small["boxes"], small["image_size"]), full["masks"]
        )
        assert after["masks"].shape[-2:] == image.shape[-2:]


def test_unpasted_masks_restores_the_model_after_an_exception():
    model = tiny_mask_rcnn()
    with pytest.raises(RuntimeError, match="boom"), unpasted_masks(model):
        assert "postprocess" in vars(model.transform)
        raise RuntimeError("boom")
    assert "postprocess" not in vars(model.transform)

"""The train and eval pipelines: every recipe keeps boxes, masks and keypoints on the image; copy-paste keeps targets
on its pixels."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.transforms import v2

import coco_utils
import transforms
from transforms import (
    COCO_PERSON_KEYPOINT_FLIP_INDICES,
    COCO_PERSON_KEYPOINT_NAMES,
    DATA_AUGMENTATIONS,
    FILL_MEAN,
    CopyPaste,
    RandomHorizontalFlipWithKeypoints,
    copypaste_allowed,
    copypaste_collate_fn,
    get_transform,
    keypoint_flip_indices,
)


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
    assert type(target["labels"]) is torch.Tensor
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64
    if "masks" in target:
        assert type(target["masks"]) is torch.Tensor
        assert target["masks"].dtype in (torch.bool, torch.uint8)  # the dataset gives bool masks, as the reference does
    if "keypoints" in target:
        assert type(target["keypoints"]) is torch.Tensor
        assert target["keypoints"].dtype == torch.float32


def coco_boxes(masks: np.ndarray) -> np.ndarray:
    """Reference tight boxes (xyxy) from pycocotools; all zero for an empty mask."""
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    boxes = np.asarray(mask_utils.toBbox(rles), dtype=np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow (N, H, W) masks by `radius` pixels in every direction (a square neighbourhood)."""
    grown = torch.nn.functional.max_pool2d(masks[:, None].float(), 2 * radius + 1, stride=1, padding=radius)
    return grown[:, 0] > 0


def erode(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels whose whole square neighbourhood of `radius` lies in the mask (the image border counts as inside)."""
    return ~dilate(~(masks != 0), radius)


def colour_distance(image: torch.Tensor, colour) -> torch.Tensor:
    """Per pixel, the largest channel difference to `colour`."""
    return (image.int() - torch.as_tensor(colour, dtype=torch.int32)[:, None, None]).abs().amax(dim=0)


# ----------------------------------------------------------------------------- a painted scene

HEIGHT, WIDTH = 96, 128
BACKGROUND = (120, 60, 180)
FLIP_INDICES = (0, 2, 1)  # keypoints: a point on the object, a "left" marker, a "right" marker
MARKER_RADIUS = 2  # markers are 5x5 squares centred on their keypoint

# Every colour is a corner of the cube {30, 230}^3: blends of two of them never look like a third.
RED, GREEN, BLUE = (230, 30, 30), (30, 230, 30), (30, 30, 230)
YELLOW, CYAN, MAGENTA, WHITE, BLACK = (230, 230, 30), (30, 230, 230), (230, 30, 230), (230, 230, 230), (30, 30, 30)


def _shape_mask(draw_shape) -> np.ndarray:
    canvas = Image.new("L", (WIDTH, HEIGHT), 0)
    draw_shape(ImageDraw.Draw(canvas))
    return np.asarray(canvas, dtype=np.uint8)


# label -> (shape, colour, [(x, y, v, colour) for the on-object point, the left marker, the right marker])
# The triangle and the L shape are heavier on their left, which tells whether an output was flipped.
SCENE = {
    1: (
        _shape_mask(lambda d: d.ellipse((12, 18, 44, 42), fill=1)),
        RED,
        [(28, 30, 2, RED), (7, 30, 2, YELLOW), (51, 30, 2, CYAN)],
    ),
    2: (
        _shape_mask(lambda d: d.polygon([(70, 10), (118, 10), (70, 50)], fill=1)),
        GREEN,
        [(80, 20, 2, GREEN), (62, 30, 1, MAGENTA), (122, 42, 2, WHITE)],
    ),
    3: (
        _shape_mask(lambda d: (d.rectangle((30, 62, 90, 71), fill=1), d.rectangle((30, 62, 41, 89), fill=1))),
        BLUE,
        [(35, 80, 2, BLUE), (22, 77, 2, BLACK), (0, 0, 0, None)],  # an unlabelled keypoint, as COCO writes it
    ),
}
ASYMMETRIC_LABELS = (2, 3)


def painted_sample() -> tuple[Image.Image, dict]:
    """The scene as a PIL image and a dataset-style target; keypoints are pixel centres (x + 0.5, y + 0.5)."""
    pixels = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    masks, keypoints = [], []
    for shape, colour, points in SCENE.values():
        pixels[shape.astype(bool)] = colour
        masks.append(shape)
        for x, y, _, marker_colour in points[1:]:
            if marker_colour is not None:
                pixels[y - MARKER_RADIUS : y + MARKER_RADIUS + 1, x - MARKER_RADIUS : x + MARKER_RADIUS + 1] = (
                    marker_colour
                )
        keypoints.append([(x + 0.5, y + 0.5, v) if v else (0.0, 0.0, 0) for x, y, v, _ in points])
    masks = np.stack(masks)
    target = {
        "boxes": tv_tensors.BoundingBoxes(coco_boxes(masks), format="XYXY", canvas_size=(HEIGHT, WIDTH)),
        "labels": torch.tensor(list(SCENE)),
        "masks": tv_tensors.Mask(torch.from_numpy(masks)),
        "keypoints": torch.tensor(keypoints, dtype=torch.float32),
        "image_id": 7,
    }
    return Image.fromarray(pixels), target


def test_painted_scene_is_what_the_checks_assume():
    image, target = painted_sample()
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    masks = plain(target["masks"]).bool()
    assert not (masks.sum(0) > 1).any()  # objects do not overlap
    for (_, colour, points), mask in zip(SCENE.values(), masks):
        assert (colour_distance(pixels, colour)[mask] == 0).all()
        for x, y, v, marker_colour in points:
            if v:
                assert tuple(pixels[:, y, x].tolist()) == marker_colour
                assert mask[y, x] == (marker_colour == colour)  # markers sit off the object
    for label in ASYMMETRIC_LABELS:
        mask = masks[list(SCENE).index(label)]
        assert seen_flipped(mask) is False and seen_flipped(mask.flip(-1)) is True


def seen_flipped(mask: torch.Tensor) -> bool | None:
    """The triangle and the L shape have more pixels left of their box's middle; a flip puts them on the right.
    None when a (cropped, shrunk) shape is too small or too even to tell."""
    columns = mask.sum(0).float()
    present = columns.nonzero()
    if len(present) < 6:
        return None
    xs = torch.arange(len(columns)).float() + 0.5
    middle = (present.min() + present.max() + 1) / 2
    skew = (columns * (xs - middle)).sum() / columns.sum()
    return None if skew.abs() <= 0.05 * len(present) else bool(skew > 0)


# ----------------------------------------------------------------------------- every recipe on the painted scene

SMALL_SIZES = {"lsj_size": 128, "multiscale_min_sizes": (64, 80, 112), "multiscale_max_size": 160}
# Resizing recipes interpolate: compare colours loosely and only away from edges. The others move pixels exactly.
RESIZING = {"lsj", "multiscale"}
CROPPING = {"lsj", "ssd", "ssdlite"}
SEEDS = range(40)


def expected_colours(recipe: str, seed: int, image: Image.Image) -> dict[tuple, tuple]:
    """Each painted colour as it should look in the output. ssd starts with a photometric distortion: replaying
    it alone with the same seed gives the colours (the steps before it draw no random numbers)."""
    colours = [BACKGROUND, RED, GREEN, BLUE, YELLOW, CYAN, MAGENTA, WHITE, BLACK]
    if recipe != "ssd":
        return {c: c for c in colours}
    torch.manual_seed(seed)
    distorted = v2.RandomPhotometricDistort()(v2.functional.pil_to_tensor(image))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    result = {}
    for colour in colours:
        y, x = (colour_distance(pixels, colour) == 0).nonzero()[0].tolist()
        result[colour] = tuple(distorted[:, y, x].tolist())
    return result


def check_output(recipe: str, image: torch.Tensor, target: dict, palette: dict) -> dict:
    """Assert that boxes, masks and keypoints agree with the image; return what happened, for the caller's counts."""
    assert_plain_outputs(image, target)
    masks, labels = target["masks"], target["labels"]
    assert masks.shape == (len(labels), *image.shape[1:])
    assert target["boxes"].shape == (len(labels), 4) and target["keypoints"].shape == (len(labels), 3, 3)
    assert labels.unique().numel() == len(labels) and set(labels.tolist()) <= set(SCENE)
    assert target["image_id"] == 7
    padded = check_boxes_and_masks(recipe, image, target, palette)
    flips = {seen_flipped(mask.bool()) for label, mask in zip(labels.tolist(), masks) if label in ASYMMETRIC_LABELS} - {
        None
    }
    assert len(flips) <= 1, "asymmetric objects disagree about the flip"
    flipped = flips.pop() if flips else None
    left_image, markers_checked = check_keypoints(recipe, image, target, palette, flipped)
    return {
        "flipped": flipped,
        "dropped": len(labels) < len(SCENE),
        "left_image": left_image,
        "markers_checked": markers_checked,
        "padded": padded,
    }


def check_boxes_and_masks(recipe: str, image: torch.Tensor, target: dict, palette: dict) -> bool:
    """Boxes are their mask's tight box; masks cover their object's colour and nothing else of it; padding (the
    fill colour) is in no mask. Returns whether the image has padding."""
    masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
    colour_tolerance, margin = (12, 3) if recipe in RESIZING else (0, 1)
    assert masks.flatten(1).any(dim=1).all()
    # recipes that crop recompute boxes from masks; the others move both (1 px apart at most, masks are resized nearest)
    box_tolerance = 0.0 if recipe in CROPPING else 1.0
    torch.testing.assert_close(boxes, torch.from_numpy(coco_boxes(masks.numpy())), atol=box_tolerance, rtol=0)
    for label, mask in zip(labels.tolist(), masks):
        distance = colour_distance(image, palette[SCENE[label][1]])
        assert (distance[erode(mask[None], margin)[0]] <= colour_tolerance).all(), f"label {label}: mask off its colour"
        assert not ((distance <= colour_tolerance) & ~dilate(mask[None], margin)[0]).any(), (
            f"label {label}: colour outside its mask"
        )
    padding = colour_distance(image, FILL_MEAN) == 0
    assert not (masks.bool() & padding).any()
    return bool(padding.any())


def check_keypoints(
    recipe: str, image: torch.Tensor, target: dict, palette: dict, flipped: bool | None
) -> tuple[bool, int]:
    """Keypoint k sits on the marker of keypoint FLIP_INDICES[k] exactly when the image was flipped, keeps that
    keypoint's visibility, and is invisible outside the image. Returns whether some keypoint left the image, and
    how many keypoints were found on their marker."""
    tolerance = 40 if recipe in RESIZING else 0
    left_image, markers_checked = False, 0
    for label, points in zip(target["labels"].tolist(), target["keypoints"]):
        for k, (x, y, v) in enumerate(points.tolist()):
            if flipped is None and k != 0:
                continue  # cannot tell which marker keypoint k should sit on
            source = FLIP_INDICES[k] if flipped else k
            _, _, v_in, marker = SCENE[label][2][source]
            inside = 0 <= x < image.shape[2] and 0 <= y < image.shape[1]
            assert v == (v_in if inside else 0), (
                f"label {label} keypoint {k}: visibility {v}, expected {v_in if inside else 0}"
            )
            left_image |= v_in > 0 and not inside
            distance = colour_distance(image, palette[marker]) if v else None
            if v == 0 or (distance > tolerance).all():
                continue  # invisible, or the marker was shrunk away (lsj's smallest scales)
            row, col = int(y), int(x)
            nearby = distance[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
            assert nearby.min() <= tolerance, f"label {label} keypoint {k} at ({x:.1f}, {y:.1f}) is off its marker"
            markers_checked += 1
    return left_image, markers_checked


@pytest.mark.parametrize("recipe", DATA_AUGMENTATIONS)
def test_every_recipe_keeps_targets_on_the_image(recipe):
    transform = get_transform(True, recipe, keypoint_flip_indices=FLIP_INDICES, **SMALL_SIZES)
    outcomes = []
    for seed in SEEDS:
        image, target = painted_sample()
        palette = expected_colours(recipe, seed, image)
        torch.manual_seed(seed)
        out_image, out_target = transform(image, target)
        outcomes.append(check_output(recipe, out_image, out_target, palette))
    assert {o["flipped"] for o in outcomes} >= {True, False}, "both flip outcomes should be checked"
    assert sum(o["markers_checked"] for o in outcomes) >= 2 * len(SEEDS), (
        "too few keypoints were found on their markers"
    )
    if recipe in CROPPING:
        assert any(o["dropped"] for o in outcomes), "no seed dropped an object"
        assert any(o["left_image"] for o in outcomes), "no seed moved a keypoint out of the image"
    if recipe in ("lsj", "ssd"):  # recipes that pad
        assert any(o["padded"] for o in outcomes)


# The synthetic people face the viewer: their left shoulder and hip are at larger x than their right ones.
PAIRS = [
    (COCO_PERSON_KEYPOINT_NAMES.index(f"left_{p}"), COCO_PERSON_KEYPOINT_NAMES.index(f"right_{p}"))
    for p in ("shoulder", "hip")
]


@pytest.mark.parametrize("recipe", DATA_AUGMENTATIONS)
def test_every_recipe_keeps_synthetic_people_consistent(synthetic_kp_root, recipe):
    """On real keypoint samples, every recipe (each flips) keeps visible keypoints inside their person's box and
    inside the image, and the left keypoints on the right: a flip must swap left and right."""
    dataset = coco_utils.get_coco(synthetic_kp_root, "train", None, with_masks=False, dataset="coco_kp")
    dataset.transforms = get_transform(True, recipe, keypoint_flip_indices(dataset.keypoint_names), **SMALL_SIZES)
    pairs_checked = 0  # 12 seeds: that none flips, or all do, has a chance of 1 in 2048
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = dataset[seed % len(dataset)]
        boxes, keypoints = plain(target["boxes"]), target["keypoints"]
        visible = keypoints[..., 2] > 0
        x, y = keypoints[..., 0], keypoints[..., 1]
        inside = (
            (x >= boxes[:, None, 0] - 1)
            & (x <= boxes[:, None, 2] + 1)
            & (y >= boxes[:, None, 1] - 1)
            & (y <= boxes[:, None, 3] + 1)
        )
        assert inside[visible].all(), f"seed {seed}: a visible keypoint outside its box"
        assert (x[visible] <= image.shape[-1]).all() and (y[visible] <= image.shape[-2]).all()
        for left, right in PAIRS:
            both = visible[:, left] & visible[:, right]
            assert (x[both, left] > x[both, right]).all(), f"seed {seed}: left and right not swapped with the flip"
            pairs_checked += int(both.sum())
    assert pairs_checked >= 12


def test_recipe_output_sizes():
    image, target = painted_sample()
    lsj = get_transform(True, "lsj", lsj_size=100)
    multiscale = get_transform(True, "multiscale", multiscale_min_sizes=(48, 64), multiscale_max_size=80)
    for seed in range(10):
        torch.manual_seed(seed)
        assert lsj(image, target)[0].shape == (3, 100, 100)
        out = multiscale(image, target)[0]
        shortest, longest = min(out.shape[1:]), max(out.shape[1:])
        assert shortest in (48, 64) or longest == 80  # the longest side caps the scale


# ----------------------------------------------------------------------------- keypoints


def test_coco_person_flip_indices_swap_left_and_right():
    names = COCO_PERSON_KEYPOINT_NAMES
    assert len(names) == len(COCO_PERSON_KEYPOINT_FLIP_INDICES) == 17
    for name, flipped_from in zip(names, COCO_PERSON_KEYPOINT_FLIP_INDICES):
        mirrored = name.replace("left", "RIGHT").replace("right", "left").replace("RIGHT", "right")
        assert names[flipped_from] == mirrored


def test_keypoint_flip_indices_from_names():
    assert keypoint_flip_indices(COCO_PERSON_KEYPOINT_NAMES) == COCO_PERSON_KEYPOINT_FLIP_INDICES
    # Case, hyphens and spaces; "left"/"right" at either end or in the middle.
    names = ["Left Wrist", "tip", "RIGHT-eye", "left-Eye", "Right Wrist", "hand_left_thumb", "HAND_RIGHT_THUMB"]
    assert keypoint_flip_indices(names) == (4, 1, 3, 2, 0, 6, 5)
    # Only whole words count, and a side without its counterpart stays where it is.
    assert keypoint_flip_indices(["leftover", "rightover", "left_knee", "brightness", "left", "right"]) == (
        0,
        1,
        2,
        3,
        5,
        4,
    )
    assert keypoint_flip_indices([]) == ()
    with pytest.raises(ValueError, match="ignoring case"):
        keypoint_flip_indices(["left_eye", "Left_Eye"])


def test_flip_moves_keypoints_like_boxes_and_swaps_pairs():
    image = tv_tensors.Image(torch.arange(3 * 10 * 20, dtype=torch.uint8).reshape(3, 10, 20))
    target = {
        "boxes": tv_tensors.BoundingBoxes([[2.0, 1.0, 8.0, 9.0]], format="XYXY", canvas_size=(10, 20)),
        "labels": torch.tensor([5]),
        "keypoints": tv_tensors.KeyPoints([[[2.0, 1.0], [8.0, 9.0], [4.5, 3.5]]], canvas_size=(10, 20)),
        "keypoints_visibility": torch.tensor([[2.0, 1.0, 0.0]]),
    }
    flip = RandomHorizontalFlipWithKeypoints(p=1.0, keypoint_flip_indices=(1, 0, 2))
    out_image, out = flip(image, target)
    assert torch.equal(out_image, image.flip(-1))
    assert out["boxes"].tolist() == [[12.0, 1.0, 18.0, 9.0]]
    # keypoint 0 is the old keypoint 1 mirrored: the box corners stay box corners
    assert out["keypoints"].tolist() == [[[12.0, 9.0], [18.0, 1.0], [15.5, 3.5]]]
    assert out["keypoints_visibility"].tolist() == [[1.0, 2.0, 0.0]]
    assert isinstance(out["keypoints"], tv_tensors.KeyPoints)
    assert out["labels"].tolist() == [5]
    never = RandomHorizontalFlipWithKeypoints(p=0.0, keypoint_flip_indices=(1, 0, 2))
    assert never(image, target)[1] is target


def test_flip_without_indices_keeps_keypoint_order():
    image = tv_tensors.Image(torch.zeros(3, 10, 20, dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes([[2.0, 1.0, 8.0, 9.0]], format="XYXY", canvas_size=(10, 20)),
        "labels": torch.tensor([5]),
        "keypoints": torch.tensor([[[2.5, 1.5, 2.0], [8.5, 9.5, 1.0]]]),
    }
    transform = get_transform(True, "hflip")
    outs = []
    for seed in range(8):
        torch.manual_seed(seed)
        outs.append(transform(image, target)[1]["keypoints"].tolist())
    assert [[[17.5, 1.5, 2.0], [11.5, 9.5, 1.0]]] in outs and target["keypoints"].tolist() in outs


def test_flip_indices_are_checked():
    with pytest.raises(ValueError, match="permutation"):
        RandomHorizontalFlipWithKeypoints(keypoint_flip_indices=(0, 0, 1))
    flip = RandomHorizontalFlipWithKeypoints(p=1.0, keypoint_flip_indices=(1, 0))
    target = {"keypoints": tv_tensors.KeyPoints(torch.zeros(1, 3, 2), canvas_size=(4, 4)), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="3 keypoints"):
        flip(tv_tensors.Image(torch.zeros(3, 4, 4, dtype=torch.uint8)), target)


def test_eval_transform_leaves_keypoints_alone():
    image, target = painted_sample()
    out_image, out = get_transform(False)(image, target)
    assert_plain_outputs(out_image, out)
    assert torch.equal(out["keypoints"], target["keypoints"])


# ----------------------------------------------------------------------------- boxes from masks


def test_tight_boxes_match_pycocotools():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(12, 17, 23, generator=generator) > 0.97).to(torch.uint8)
    masks[3] = 0
    masks[4, 16, 22] = 1
    boxes, nonempty = transforms._tight_boxes(masks)
    assert torch.equal(boxes, torch.from_numpy(coco_boxes(masks.numpy())))
    assert nonempty.tolist() == masks.flatten(1).any(dim=1).tolist()


def test_boxes_from_masks_follow_masks_and_keep_invalid_boxes_invalid():
    masks = torch.zeros(4, 12, 16, dtype=torch.uint8)
    masks[0, 2:5, 3:9] = 1  # box larger than its mask (a crop clamped it)
    masks[1, 6:8, 1:2] = 1  # box a crop marked invalid: must not come back
    masks[3, 0:12, 15:16] = 1
    boxes = tv_tensors.BoundingBoxes(
        [[1.0, 0.0, 12.0, 9.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 6.0, 6.0], [14.5, 0.0, 16.0, 12.0]],
        format="XYXY",
        canvas_size=(12, 16),
    )
    image = tv_tensors.Image(torch.zeros(3, 12, 16, dtype=torch.uint8))
    _, out = transforms.BoxesFromMasks()(
        image, {"boxes": boxes, "masks": tv_tensors.Mask(masks), "labels": torch.arange(4)}
    )
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and out["boxes"].canvas_size == (12, 16)
    assert out["boxes"].tolist() == [
        [3.0, 2.0, 9.0, 5.0],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [15.0, 0.0, 16.0, 12.0],
    ]
    _, sanitized = v2.SanitizeBoundingBoxes()(image, out)
    assert sanitized["labels"].tolist() == [0, 3]
    _, no_masks = transforms.BoxesFromMasks()(image, {"boxes": boxes, "labels": torch.arange(4)})
    assert no_masks["boxes"] is boxes


# ----------------------------------------------------------------------------- behaviour on dataset samples


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


@pytest.mark.parametrize("recipe", DATA_AUGMENTATIONS)
def test_seeded_train_transform_is_reproducible(synthetic_root, recipe):
    transform = get_transform(True, recipe, **SMALL_SIZES)
    ds = coco_utils.get_coco(synthetic_root, "train", transforms=transform)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        results.append([ds[i] for i in range(4)])
    for (image_a, target_a), (image_b, target_b) in zip(*results):
        assert_plain_outputs(image_a, target_a)
        assert torch.equal(image_a, image_b)
        assert torch.equal(target_a["boxes"], target_b["boxes"])
        assert torch.equal(target_a["masks"], target_b["masks"])


def test_train_transform_drops_small_boxes_with_their_labels_masks_and_keypoints():
    image = tv_tensors.Image(torch.zeros(3, 10, 20, dtype=torch.uint8))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [[1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 2.5, 8.0], [6.0, 1.0, 9.0, 4.0]], format="XYXY", canvas_size=(10, 20)
        ),
        "labels": torch.tensor([3, 7, 9]),
        "masks": tv_tensors.Mask(torch.stack([torch.full((10, 20), v, dtype=torch.uint8) for v in (1, 0, 1)])),
        "keypoints": torch.tensor([[[1.5, 1.5, 2.0]], [[2.2, 3.0, 2.0]], [[7.5, 2.5, 1.0]]]),
        "image_id": 4,
    }
    for seed in range(6):
        torch.manual_seed(seed)
        _, out = get_transform(train=True)(image, target)
        assert out["labels"].tolist() == [3, 9]
        assert out["masks"].shape == (2, 10, 20) and out["masks"].all()
        if out["boxes"].tolist() == [[1.0, 1.0, 5.0, 5.0], [6.0, 1.0, 9.0, 4.0]]:
            assert out["keypoints"].tolist() == [[[1.5, 1.5, 2.0]], [[7.5, 2.5, 1.0]]]
        else:
            assert out["boxes"].tolist() == [[15.0, 1.0, 19.0, 5.0], [11.0, 1.0, 14.0, 4.0]]
            assert out["keypoints"].tolist() == [[[18.5, 1.5, 2.0]], [[12.5, 2.5, 1.0]]]
    assert "keypoints_visibility" not in out


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


def test_augmentation_names():
    assert set(DATA_AUGMENTATIONS) == {"hflip", "lsj", "multiscale", "ssd", "ssdlite"}
    for name in DATA_AUGMENTATIONS:
        get_transform(train=True, data_augmentation=name)
    with pytest.raises(ValueError, match="ssdlite"):
        get_transform(train=True, data_augmentation="mosaic")
    get_transform(train=False, data_augmentation="mosaic")  # evaluation has no augmentation to choose
    assert [name for name in DATA_AUGMENTATIONS if copypaste_allowed(name)] == ["lsj"]
    assert not copypaste_allowed("mosaic")


# ----------------------------------------------------------------------------- copy-paste

PASTE_SIZE = 64


def _paste_sample(index: int, rectangles: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, dict]:
    """An image of PASTE_SIZE with one rectangle or ellipse per object, each in its own colour; labels 10 * index +
    j."""
    generator = torch.Generator().manual_seed(index)
    image = (
        torch.randint(0, 256, (3, 1, 1), dtype=torch.uint8, generator=generator)
        .expand(3, PASTE_SIZE, PASTE_SIZE)
        .clone()
    )
    masks = []
    for j, (x1, y1, x2, y2) in enumerate(rectangles):
        canvas = Image.new("L", (PASTE_SIZE, PASTE_SIZE), 0)
        draw = ImageDraw.Draw(canvas)
        (draw.ellipse if j % 2 else draw.rectangle)((x1, y1, x2 - 1, y2 - 1), fill=1)
        mask = torch.from_numpy(np.asarray(canvas, dtype=np.uint8).copy())
        image[:, mask.bool()] = torch.randint(0, 256, (3, 1), dtype=torch.uint8, generator=generator)
        masks.append(mask)
    masks = torch.stack(masks)
    target = {
        "boxes": torch.from_numpy(coco_boxes(masks.numpy())),
        "labels": torch.tensor([10 * index + j for j in range(len(rectangles))]),
        "masks": masks,
        "image_id": index,
    }
    return image, target


def paste_batch() -> list[tuple[torch.Tensor, dict]]:
    """Three images whose objects overlap each other's places: pastes cover some objects fully, some in part."""
    layouts = [
        [(4, 4, 30, 30), (40, 10, 60, 50), (10, 40, 20, 50)],
        [(2, 2, 36, 36), (36, 36, 62, 62)],
        [(20, 20, 44, 44), (42, 4, 62, 24), (6, 44, 24, 60), (14, 14, 20, 20)],
    ]
    return [_paste_sample(i, layout) for i, layout in enumerate(layouts)]


def check_paste(source, destination, output, blending: bool) -> dict:
    (src_image, src), (dst_image, dst), (out_image, out) = source, destination, output
    assert out_image.dtype == torch.uint8 and out_image.shape == dst_image.shape
    labels = out["labels"].tolist()
    pasted = [label for label in labels if label in src["labels"].tolist()]
    kept = [label for label in labels if label in dst["labels"].tolist()]
    assert labels == kept + pasted and pasted, "destination objects first, then a non-empty paste"
    assert len(out["boxes"]) == len(out["masks"]) == len(labels)
    src_index = {label: i for i, label in enumerate(src["labels"].tolist())}
    pasted_masks = src["masks"][[src_index[label] for label in pasted]]
    assert torch.equal(out["masks"][len(kept) :], pasted_masks)
    assert torch.equal(out["boxes"][len(kept) :], src["boxes"][[src_index[label] for label in pasted]])
    covered = pasted_masks.bool().any(dim=0)
    remaining = dst["masks"] * ~covered
    expected_kept = [label for label, mask in zip(dst["labels"].tolist(), remaining) if mask.any()]
    assert kept == expected_kept, "fully covered objects are dropped, the others kept in order"
    dst_index = {label: i for i, label in enumerate(dst["labels"].tolist())}
    kept_masks = remaining[[dst_index[label] for label in kept]]
    assert torch.equal(out["masks"][: len(kept)], kept_masks)
    assert torch.equal(out["boxes"][: len(kept)], torch.from_numpy(coco_boxes(kept_masks.numpy())))
    if blending:
        inner, outer = erode(covered[None], 2)[0], dilate(covered[None], 2)[0]
        assert torch.equal(out_image[:, inner], src_image[:, inner])
        assert torch.equal(out_image[:, ~outer], dst_image[:, ~outer])
        # the whole frame blended with the blurred paste (the paper's alpha blending), up to rounding
        soft = v2.functional.gaussian_blur(covered[None].float(), [5, 5], [2.0])
        expected = src_image.float() * soft + dst_image.float() * (1 - soft)
        assert (out_image.float() - expected).abs().max() <= 0.5 + 1e-3
    else:
        assert torch.equal(out_image, torch.where(covered, src_image, dst_image))
    shrunk = any((out["boxes"][i] != dst["boxes"][dst_index[label]]).any() for i, label in enumerate(kept))
    return {"dropped": len(kept) < len(dst["labels"]), "shrunk": bool(shrunk), "pasted": tuple(pasted)}


@pytest.mark.parametrize("blending", [False, True])
def test_copy_paste_keeps_targets_on_the_pasted_pixels(blending):
    batch = paste_batch()
    events = []
    for seed in range(20):
        torch.manual_seed(seed)
        outputs = CopyPaste(blending=blending)(batch)
        assert len(outputs) == len(batch)
        for i, output in enumerate(outputs):
            events.append(check_paste(batch[i - 1], batch[i], output, blending))
    assert any(e["dropped"] for e in events), "no object was ever fully covered"
    assert any(e["shrunk"] for e in events), "no box ever shrank to its visible part"
    assert len({e["pasted"] for e in events}) > 3, "the pasted subsets should vary"


def test_copy_paste_is_reproducible_and_leaves_its_input_alone():
    batch = paste_batch()
    before = [
        (image.clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()})
        for image, target in batch
    ]
    results = []
    for _ in range(2):
        torch.manual_seed(5)
        results.append(copypaste_collate_fn(batch))
    (images_a, targets_a), (images_b, targets_b) = results
    assert isinstance(images_a, tuple) and len(images_a) == len(targets_a) == 3
    for a, b in zip(images_a, images_b):
        assert torch.equal(a, b)
    for a, b in zip(targets_a, targets_b):
        assert a.keys() == b.keys() and all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    for (image, target), (old_image, old_target) in zip(batch, before):
        assert torch.equal(image, old_image)
        assert all(torch.equal(torch.as_tensor(target[k]), torch.as_tensor(old_target[k])) for k in target)


def test_copy_paste_refuses_what_it_cannot_paste():
    batch = paste_batch()
    assert CopyPaste()(batch[:1]) == batch[:1]
    small = (batch[1][0][:, :32, :32], batch[1][1])
    with pytest.raises(ValueError, match="one size"):
        CopyPaste()([batch[0], small])
    no_masks = (batch[1][0], {k: v for k, v in batch[1][1].items() if k != "masks"})
    with pytest.raises(ValueError, match="masks"):
        CopyPaste()([batch[0], no_masks])


def test_lsj_then_copy_paste_on_dataset_samples(synthetic_root):
    ds = coco_utils.get_coco(synthetic_root, "train", transforms=get_transform(True, "lsj", lsj_size=96))
    torch.manual_seed(0)
    images, targets = copypaste_collate_fn([ds[i] for i in range(4)])
    for image, target in zip(images, targets):
        assert_plain_outputs(image, target)
        assert image.shape == (3, 96, 96)
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) > 0
        assert torch.equal(target["boxes"], torch.from_numpy(coco_boxes(target["masks"].numpy())))

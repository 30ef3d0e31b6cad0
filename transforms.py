"""Train and evaluation pipelines on torchvision.transforms.v2 and tv_tensors, and batch-level copy-paste.

Images leave the pipeline as uint8 tensors: they are a quarter of the size of float ones to
collate and copy, and engine.py converts them to float on the model's device.

Targets carry `boxes` (xyxy pixels), `labels`, optionally `masks` (N, H, W) and `keypoints`
(N, K, 3: x, y, visibility as in COCO). All coordinates are continuous pixel coordinates, as
for boxes: pixel i spans [i, i + 1), so a flip maps x to width - x for boxes and keypoints alike.
Inside the training pipeline keypoints travel as a tv_tensors.KeyPoints (N, K, 2) so that
every geometric transform moves them, with their visibility beside them; the pipeline's last
steps put them back together, with visibility 0 for keypoints that left the image.
"""

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import utils

DATA_AUGMENTATIONS = ("hflip", "lsj", "multiscale", "ssd", "ssdlite")
# Copy-paste pastes objects at the same pixel positions, so it needs the fixed-size images lsj makes.
COPYPASTE_AUGMENTATIONS = ("lsj",)

# The reference's padding colour: the dataset mean in uint8 pixels, so padded areas look like average image content.
FILL_MEAN = (123, 117, 104)
LSJ_SIZE = 1024
MULTISCALE_MIN_SIZES = tuple(range(480, 801, 32))
MULTISCALE_MAX_SIZE = 1333

COCO_PERSON_KEYPOINT_NAMES = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# After a horizontal flip, keypoint k of the flipped person is keypoint COCO_PERSON_KEYPOINT_FLIP_INDICES[k] of the
# original.
COCO_PERSON_KEYPOINT_FLIP_INDICES = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# "left" or "right" as a whole word: not inside a longer one ("leftover"), but between "_", "-", spaces or the ends.
_SIDE_WORD = re.compile(r"(?<![^\W_])(left|right)(?![^\W_])")


def _mirror_name(name: str) -> str:
    """`name` with "left" and "right" swapped, in lower case (names are matched case-insensitively)."""
    return _SIDE_WORD.sub(lambda m: "right" if m.group(0) == "left" else "left", name.lower())


def keypoint_flip_indices(names: Sequence[str]) -> tuple[int, ...]:
    """For each keypoint name, the index of its mirror image ("left_eye" <-> "right_eye"), or its own index when
    the name has no side or its counterpart is missing: the flip order of a dataset, from its category's "keypoints"."""
    index = {}
    for i, name in enumerate(names):
        if name.lower() in index:
            # Two names differing only in case would make the counterpart ambiguous.
            raise ValueError(f"keypoint names must differ ignoring case, got {name!r} twice")
        index[name.lower()] = i
    return tuple(index.get(_mirror_name(name), i) for i, name in enumerate(names))


# Per-object entries that must be dropped together with their boxes (masks are found by SanitizeBoundingBoxes itself).
_VISIBILITY = "keypoints_visibility"
_PER_OBJECT_KEYS = ("labels", "keypoints", _VISIBILITY, "area", "iscrowd")


def copypaste_allowed(data_augmentation: str) -> bool:
    """Whether `--use-copypaste` may be combined with this recipe (lsj only)."""
    return data_augmentation in COPYPASTE_AUGMENTATIONS


def get_transform(
    train: bool,
    data_augmentation: str = "hflip",
    keypoint_flip_indices: Sequence[int] | None = None,
    *,
    lsj_size: int = LSJ_SIZE,
    multiscale_min_sizes: Sequence[int] = MULTISCALE_MIN_SIZES,
    multiscale_max_size: int = MULTISCALE_MAX_SIZE,
) -> Callable:
    """The pipeline for a split; `data_augmentation` picks the training recipe (see DATA_AUGMENTATIONS).

    `keypoint_flip_indices` (e.g. COCO_PERSON_KEYPOINT_FLIP_INDICES) says which keypoint becomes which
    on a horizontal flip; None leaves keypoint order alone. The sizes default to the reference's.
    """
    if not train:
        return v2.Compose([v2.ToImage(), v2.ToPureTensor()])
    flip = RandomHorizontalFlipWithKeypoints(p=0.5, keypoint_flip_indices=keypoint_flip_indices)
    augmentation = _augmentation_steps(data_augmentation, flip, lsj_size, multiscale_min_sizes, multiscale_max_size)
    return v2.Compose(
        [
            v2.ToImage(),
            _KeypointsToTvTensor(),
            *augmentation,
            # Geometric augmentations can shrink a box to nothing; drop such boxes with all else about their object.
            v2.SanitizeBoundingBoxes(min_size=1, labels_getter=_per_object_entries),
            _KeypointsToCoco(),
            v2.ToPureTensor(),
        ]
    )


def _augmentation_steps(
    name: str, flip: v2.Transform, lsj_size: int, multiscale_min_sizes: Sequence[int], multiscale_max_size: int
) -> list[Callable]:
    """The reference's recipes (references/detection/presets.py), on uint8 images."""
    if name == "hflip":
        return [flip]
    if name == "lsj":
        return [
            v2.ScaleJitter(target_size=(lsj_size, lsj_size), scale_range=(0.1, 2.0), antialias=True),
            # Crops where the image is larger than lsj_size and pads where it is smaller: always lsj_size square.
            # Unlike the reference's FixedSizeCrop, which pads right and bottom only, a smaller image lands at a
            # random place.
            v2.RandomCrop((lsj_size, lsj_size), pad_if_needed=True, fill=_fill()),
            flip,
            BoxesFromMasks(),
        ]
    if name == "multiscale":
        return [
            v2.RandomShortestSize(min_size=list(multiscale_min_sizes), max_size=multiscale_max_size, antialias=True),
            flip,
        ]
    if name == "ssd":
        return [
            v2.RandomPhotometricDistort(),
            v2.RandomZoomOut(fill=_fill()),
            v2.RandomIoUCrop(),
            flip,
            BoxesFromMasks(),
        ]
    if name == "ssdlite":
        return [v2.RandomIoUCrop(), flip, BoxesFromMasks()]
    raise ValueError(f"unknown data augmentation {name!r}; choose one of {', '.join(DATA_AUGMENTATIONS)}")


def _fill() -> dict:
    """Padding colours per type: the mean for images, 0 for masks, so padding never adds pixels to an object.
    A new dict each time: transforms.v2 converts the values inside the dict it is given."""
    return {tv_tensors.Image: FILL_MEAN, tv_tensors.Mask: 0}


def _per_object_entries(inputs: tuple[Any, dict]) -> tuple[torch.Tensor, ...]:
    """SanitizeBoundingBoxes' labels_getter: every per-object entry of the target that is not a box or mask."""
    _, target = inputs
    return tuple(target[key] for key in _PER_OBJECT_KEYS if key in target)


# ----------------------------------------------------------------------------- keypoints


def _check_flip_indices(indices: Sequence[int]) -> list[int]:
    indices = [int(i) for i in indices]
    if sorted(indices) != list(range(len(indices))):
        raise ValueError(f"keypoint_flip_indices must be a permutation of 0..{len(indices) - 1}, got {indices}")
    return indices


class _KeypointsToTvTensor(v2.Transform):
    """Split COCO (N, K, 3) keypoints into tv_tensors.KeyPoints (N, K, 2), which the geometric transforms move,
    and their visibility (N, K), which only flips and SanitizeBoundingBoxes touch."""

    def forward(self, image: Any, target: dict) -> tuple[Any, dict]:
        if "keypoints" not in target:
            return image, target
        keypoints = torch.as_tensor(target["keypoints"], dtype=torch.float32)
        target = dict(target)
        target["keypoints"] = tv_tensors.KeyPoints(keypoints[..., :2], canvas_size=tuple(F.get_size(image)))
        target[_VISIBILITY] = keypoints[..., 2]
        return image, target


class _KeypointsToCoco(v2.Transform):
    """Join keypoints and visibility back into COCO's (N, K, 3); keypoints outside the image become invisible (v=0).
    No transform here moves a keypoint back into the image once it has left, so checking at the end is enough."""

    def forward(self, image: Any, target: dict) -> tuple[Any, dict]:
        if _VISIBILITY not in target:
            return image, target
        target = dict(target)
        points = target["keypoints"].as_subclass(torch.Tensor)
        visibility = target.pop(_VISIBILITY)
        height, width = F.get_size(image)
        x, y = points[..., 0], points[..., 1]
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        visibility = torch.where(inside, visibility, torch.zeros_like(visibility))
        target["keypoints"] = torch.cat([points, visibility.unsqueeze(-1)], dim=-1)
        return image, target


class RandomHorizontalFlipWithKeypoints(v2.Transform):
    """Horizontal flip of the image and its whole target, swapping left/right keypoints in the same step.

    One random draw decides both, so keypoint order can never disagree with the image. Keypoints
    flip as x -> width - x, like boxes; torchvision's own KeyPoints kernel uses width - 1 - x (pixel
    indices), which would put keypoints one pixel off their boxes and masks.
    """

    def __init__(self, p: float = 0.5, keypoint_flip_indices: Sequence[int] | None = None):
        super().__init__()
        self.p = p
        self.keypoint_flip_indices = (
            None if keypoint_flip_indices is None else _check_flip_indices(keypoint_flip_indices)
        )

    def forward(self, image: Any, target: dict) -> tuple[Any, dict]:
        if torch.rand(1) >= self.p:
            return image, target
        width = F.get_size(image)[1]
        return F.horizontal_flip(image), {key: self._flip_entry(key, value, width) for key, value in target.items()}

    def _flip_entry(self, key: str, value: Any, width: int) -> Any:
        if isinstance(value, tv_tensors.KeyPoints):
            flipped = value.as_subclass(torch.Tensor).clone()
            flipped[..., 0] = width - flipped[..., 0]
            return tv_tensors.wrap(self._swap(flipped), like=value)
        if key == _VISIBILITY:
            return self._swap(value)
        if isinstance(value, tv_tensors.TVTensor):
            return F.horizontal_flip(value)
        return value  # labels, image_id and other plain entries do not move

    def _swap(self, per_keypoint: torch.Tensor) -> torch.Tensor:
        """Reorder the keypoint axis (dim 1 of (N, K, ...)) so that left and right trade places."""
        if self.keypoint_flip_indices is None:
            return per_keypoint
        if per_keypoint.shape[1] != len(self.keypoint_flip_indices):
            raise ValueError(
                f"targets have {per_keypoint.shape[1]} keypoints, "
                f"keypoint_flip_indices has {len(self.keypoint_flip_indices)}"
            )
        return per_keypoint[:, self.keypoint_flip_indices]


# ----------------------------------------------------------------------------- boxes from masks


def _tight_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy boxes around each mask's pixels, in the boxes' convention (a 1-pixel mask gets a 1x1 box), and
    which masks have any pixel (the others get zeros). Hand-written because torchvision.ops.masks_to_boxes
    returns inclusive pixel indices (a box one pixel too small) and fails on empty masks."""
    # amax reduces uint8 masks in place of a bool copy: about ten times faster than (masks != 0).any() on 1024 px masks.
    rows, columns = masks.amax(dim=2) > 0, masks.amax(dim=1) > 0  # (N, H), (N, W)
    height, width = masks.shape[-2:]
    x1 = columns.int().argmax(dim=1)
    x2 = width - columns.flip(1).int().argmax(dim=1)
    y1 = rows.int().argmax(dim=1)
    y2 = height - rows.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    nonempty = columns.any(dim=1)
    boxes[~nonempty] = 0
    return boxes, nonempty


def _has_area(boxes: torch.Tensor) -> torch.Tensor:
    """Which xyxy boxes are wider and taller than nothing."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _boxes_from_masks(boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each box replaced by the tight box of its mask; boxes already degenerate, or whose mask is empty, become zero."""
    tight, nonempty = _tight_boxes(masks)
    valid = nonempty & _has_area(boxes)
    tight[~valid] = 0
    return tight.to(boxes.dtype)


class BoxesFromMasks(v2.Transform):
    """After a crop, make each box the tight box of what is left of its mask.

    Crops clamp boxes to the crop window, which for a non-rectangular object leaves a box larger than
    what is left of it; with masks at hand the box can follow the object, as detectron2 does when it
    crops instance masks. Boxes a crop marked invalid (RandomIoUCrop zeroes those whose centre it cut
    away) stay invalid, and objects with nothing left become degenerate: SanitizeBoundingBoxes drops
    both. Targets without masks pass through.
    """

    def forward(self, image: Any, target: dict) -> tuple[Any, dict]:
        if "masks" not in target:
            return image, target
        boxes = target["boxes"]
        recomputed = _boxes_from_masks(boxes.as_subclass(torch.Tensor), target["masks"].as_subclass(torch.Tensor))
        return image, {**target, "boxes": tv_tensors.wrap(recomputed, like=boxes)}


# ----------------------------------------------------------------------------- copy-paste


class CopyPaste:
    """Simple Copy-Paste (Ghiasi et al., 2021) over a batch of transformed (image, target) pairs.

    Image i receives a random, non-empty subset of the objects of image i - 1 (the previous one in the
    batch), pasted at the same pixel positions. The objects it already had lose the pixels pasted over
    them: their masks and boxes shrink to what is left, and those with nothing left are dropped. With
    `blending`, the pasted pixels' edges are softened by a Gaussian-blurred alpha, as in the paper; masks
    follow the unblurred paste. All images must be the same size (lsj makes them so) and targets must
    carry masks. Random draws come from torch's generator, so a seeded run is reproducible.
    """

    def __init__(self, blending: bool = True, blur_kernel_size: int = 5, blur_sigma: float = 2.0):
        self.blending = blending
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = blur_sigma

    def __call__(self, batch: Sequence[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
        _check_pasteable(batch)
        if len(batch) < 2:
            return list(batch)  # an image pasted onto itself gains nothing
        return [self._paste(batch[i - 1], batch[i]) for i in range(len(batch))]

    def _paste(
        self, source: tuple[torch.Tensor, dict], destination: tuple[torch.Tensor, dict]
    ) -> tuple[torch.Tensor, dict]:
        source_image, source_target = source
        image, target = destination
        chosen = _random_subset(len(source_target["labels"]))
        if len(chosen) == 0:
            return image, target
        # index_select with integer indices: boolean indexing copies 1024 px masks about ten times slower.
        pasted_masks = source_target["masks"].index_select(0, chosen)
        alpha = pasted_masks.amax(dim=0) > 0  # (H, W) bool
        kept_masks = target["masks"] * ~alpha
        kept_boxes = _boxes_from_masks(target["boxes"], kept_masks)
        keep = _has_area(kept_boxes).nonzero().flatten()
        out_target = dict(target)
        out_target["masks"] = torch.cat([kept_masks.index_select(0, keep), pasted_masks])
        out_target["boxes"] = torch.cat([kept_boxes[keep], source_target["boxes"][chosen]])
        out_target["labels"] = torch.cat([target["labels"][keep], source_target["labels"][chosen]])
        return self._composite(image, source_image, alpha), out_target

    def _composite(self, image: torch.Tensor, source_image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if not self.blending:
            return torch.where(alpha, source_image, image)
        # Blur and blend only in a window around the pasted pixels (the blurred alpha is 0 farther away): on 1024 px
        # images this is several times faster than blurring the whole frame. The margin exceeds the blur's reach, so
        # the window's own border padding sees only zeros, as the whole frame's would.
        boxes, _ = _tight_boxes(alpha[None])
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        margin = self.blur_kernel_size
        height, width = alpha.shape
        rows = slice(max(y1 - margin, 0), min(y2 + margin, height))
        columns = slice(max(x1 - margin, 0), min(x2 + margin, width))
        soft = F.gaussian_blur(alpha[None, rows, columns].float(), [self.blur_kernel_size] * 2, [self.blur_sigma])
        blended = source_image[:, rows, columns].float() * soft + image[:, rows, columns].float() * (1 - soft)
        composite = image.clone()
        composite[:, rows, columns] = blended.round_().clamp_(0, 255).to(image.dtype)
        return composite


def _random_subset(count: int) -> torch.Tensor:
    """Indices of a random subset of `count` objects (each taken with probability 1/2), never empty when count > 0."""
    chosen = torch.rand(count) < 0.5
    if count and not chosen.any():
        chosen[torch.randint(count, ())] = True
    return chosen.nonzero().flatten()


def _check_pasteable(batch: Sequence[tuple[torch.Tensor, dict]]) -> None:
    sizes = {tuple(image.shape[-2:]) for image, _ in batch}
    if len(sizes) > 1:
        raise ValueError(f"copy-paste needs images of one size (use it with lsj), got sizes {sorted(sizes)}")
    for _, target in batch:
        if "masks" not in target:
            raise ValueError("copy-paste needs instance masks in the targets (a mask model)")
        if "keypoints" in target:
            raise ValueError("copy-paste does not handle keypoints")


_default_copypaste = CopyPaste()


def copypaste_collate_fn(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[tuple, ...]:
    """The training DataLoader's collate_fn with --use-copypaste: copy-paste, then batch as utils.collate_fn does."""
    return utils.collate_fn(_default_copypaste(batch))

"""COCO evaluation of detection outputs, with the torchvision reference's call pattern.

    evaluator = CocoEvaluator(coco_gt, ["bbox", "segm"])    # backend="faster_coco_eval" (default) or "pycocotools"
    evaluator.update({image_id: output, ...})               # per batch, outputs still on the model's device
    evaluator.synchronize_between_processes()                # merge all ranks' results
    evaluator.accumulate(); evaluator.summarize()
    evaluator.coco_eval["segm"].stats                        # the 12 numbers

Unlike the reference:
- `update` only turns outputs into compact per-image results (float32 arrays, one compressed RLE
  string per mask); the backend's evaluate() runs once over all images in `accumulate()`. That is
  exactly what pycocotools gives when run by hand on the same detections, and much faster.
- Masks are thresholded and RLE-encoded box by box: a mask is zero outside its box, so the work
  grows with the boxes' area, not the image's. Under `unpasted_masks(model)`, Mask R-CNN's 28x28
  mask probabilities are pasted into their boxes here, in batches on the model's device, instead of
  one full-size image per mask by the model.
- Results are kept per image id, so an image evaluated on two ranks (a padded distributed
  sampler) counts once.
- faster-coco-eval (C++) gives pycocotools' numbers several times faster; pycocotools stays selectable.
"""

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

import utils

IOU_TYPES = ("bbox", "segm", "keypoints")
BACKENDS = ("faster_coco_eval", "pycocotools")
DEFAULT_BACKEND = "faster_coco_eval"
MASK_THRESHOLD = 0.5  # as the reference: a pixel belongs to the mask when its probability is above this


# ----------------------------------------------------------------------------- masks as COCO RLE


def _size_groups(widths: Sequence[int], heights: Sequence[int], waste: float = 2.0, slack: int = 65536) -> list[list[int]]:
    """Split crops into groups padded to one (width, height + 1) shape each: tallest first, and a new
    group whenever padding would cost more than `waste` times the group's own pixels plus `slack`
    (so that small crops share a group rather than each paying for its own tensor operations)."""
    groups: list[list[int]] = []
    group: list[int] = []
    group_width = group_height = group_area = 0
    for i in sorted(range(len(widths)), key=lambda i: -heights[i]):
        width, height = max(group_width, widths[i]), max(group_height, heights[i])
        area = group_area + widths[i] * (heights[i] + 1)
        if group and (len(group) + 1) * width * (height + 1) > waste * area + slack:
            groups.append(group)
            group, group_area = [], 0
            width, height, area = widths[i], heights[i], widths[i] * (heights[i] + 1)
        group.append(i)
        group_width, group_height, group_area = width, height, area
    if group:
        groups.append(group)
    return groups


def _counts_from_column_crops(bits: torch.Tensor, left: np.ndarray, top: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Uncompressed COCO RLE counts of full-size masks, from crops holding all of their foreground.

    bits[k, c, r] is pixel (top[k] + r, left[k] + c) of mask k, so each crop is stored column by
    column, and every column ends with at least one zero. COCO counts are the lengths of the
    alternating 0/1 runs over the whole image in column-major order, starting with 0s: they follow
    from where the crops change value, moved to full-image indices, without the full-size masks.
    """
    n, _, column_length = bits.shape
    flat = bits.reshape(n, -1)
    changes = torch.empty_like(flat)
    changes[:, 0] = flat[:, 0]
    torch.ne(flat[:, 1:], flat[:, :-1], out=changes[:, 1:])
    mask_index, position = changes.nonzero().cpu().numpy().T
    column, row = np.divmod(position, column_length)
    index = (left[mask_index] + column) * height + top[mask_index] + row
    # A crop as tall as the image: a run going on from the bottom of one column into the top of the
    # next one shows up as a change to 0 (the zero under the column) and back at the same index.
    repeated = np.flatnonzero((index[1:] == index[:-1]) & (mask_index[1:] == mask_index[:-1]))
    if len(repeated):
        keep = np.ones(len(index), dtype=bool)
        keep[repeated] = keep[repeated + 1] = False
        index, mask_index = index[keep], mask_index[keep]
    # A mask that is on at the image's last pixel ends on a run of 1s: COCO writes no empty run after it.
    inside = index < height * width
    index, mask_index = index[inside], mask_index[inside]
    bounds = np.searchsorted(mask_index, np.arange(n + 1))
    return [np.diff(index[a:b], prepend=0, append=height * width) for a, b in zip(bounds[:-1], bounds[1:])]


def _compress(counts: list[np.ndarray], height: int, width: int) -> list[bytes]:
    """pycocotools' compressed RLE strings for uncompressed counts (its C encoder, one call per image)."""
    if not counts:
        return []
    rles = mask_utils.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)
    return [rle["counts"] for rle in rles]


def _encode_crops(
    crops_of: Callable[[list[int], int, int], torch.Tensor], origins: np.ndarray, sizes: np.ndarray, height: int, width: int
) -> list[bytes]:
    """Group crops by size, let `crops_of(group, width, height)` build each group's column-major bits, encode them."""
    counts: list[np.ndarray] = [np.array([height * width])] * len(sizes)
    for group in _size_groups(sizes[:, 0].tolist(), sizes[:, 1].tolist()):
        crop_width, crop_height = sizes[group].max(axis=0).tolist()
        if crop_width == 0 or crop_height == 0:
            continue  # nothing inside the image: all zeros
        bits = crops_of(group, crop_width, crop_height)
        for i, c in zip(group, _counts_from_column_crops(bits, origins[group, 0], origins[group, 1], height, width)):
            counts[i] = c
    return _compress(counts, height, width)


def _first_and_size(rows_or_columns: torch.Tensor) -> torch.Tensor:
    """For each row of a (N, L) bool tensor: the first True index and the span to the last one (0, 0 if none)."""
    length = rows_or_columns.shape[1]
    positions = torch.arange(length, device=rows_or_columns.device)
    first = torch.where(rows_or_columns, positions, length).amin(dim=1)
    last = torch.where(rows_or_columns, positions, -1).amax(dim=1)
    size = (last - first + 1).clamp(min=0)
    return torch.stack([torch.where(size > 0, first, 0), size], dim=1)


def encode_masks(masks: torch.Tensor, threshold: float = MASK_THRESHOLD) -> list[bytes]:
    """Compressed COCO RLE strings of (N, 1, H, W) full-size mask probabilities above `threshold`:
    what the reference gets from pycocotools one mask at a time, encoded within each mask's extent."""
    if len(masks) == 0:
        return []
    height, width = masks.shape[-2:]
    binary = masks[:, 0] > threshold
    x_extent, y_extent = _first_and_size(binary.any(dim=1)), _first_and_size(binary.any(dim=2))
    origins = torch.stack([x_extent[:, 0], y_extent[:, 0]], dim=1).cpu().numpy()
    sizes = torch.stack([x_extent[:, 1], y_extent[:, 1]], dim=1).cpu().numpy()

    def crops_of(group: list[int], crop_width: int, crop_height: int) -> torch.Tensor:
        bits = torch.zeros(len(group), crop_width, crop_height + 1, dtype=torch.bool, device=masks.device)
        for j, i in enumerate(group):
            (x, y), (w, h) = origins[i], sizes[i]
            bits[j, :w, :h] = binary[i, y : y + h, x : x + w].T
        return bits

    return _encode_crops(crops_of, origins, sizes, height, width)


def _sampling(
    box_start: torch.Tensor, box_size: torch.Tensor, crop_start: torch.Tensor, crop_size: torch.Tensor, length: int, in_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resampling as F.interpolate(align_corners=False) does it, from a padded mask's axis
    (in_size long) to the box's (box_size), at the crop's positions along each axis (all (n, 2)).

    Returns source indices (n, 2, 2, length): low and high, and their weights, which are 0 past the
    crop's end.
    """
    steps = torch.arange(length, device=box_size.device)
    positions = steps.float() + (crop_start - box_start)[..., None].float()
    scale = torch.full_like(box_size, in_size, dtype=torch.float32) / box_size.float()
    # scale * (position + 0.5) - 0.5 rounded once, as PyTorch's kernel computes it (a fused multiply-add)
    source = (scale[..., None].double() * (positions + 0.5).double() - 0.5).float().clamp_(min=0)
    low = source.floor()
    weight_high = source - low
    low = low.long().clamp_(max=in_size - 1)
    inside = steps < crop_size[..., None]
    indices = torch.stack([low, (low + 1).clamp_(max=in_size - 1)], dim=2)
    weights = torch.stack([(1 - weight_high) * inside, weight_high * inside], dim=2)
    return indices, weights


def _sampling_matrix(indices: torch.Tensor, weights: torch.Tensor, length: int, in_size: int) -> torch.Tensor:
    """(n, length, in_size) matrices of one axis' bilinear weights, from _sampling's (n, 2, length) slices."""
    matrix = torch.zeros(len(indices), length, in_size, device=indices.device)
    for side in range(2):  # low and high source index
        matrix.scatter_add_(2, indices[:, side, :length, None], weights[:, side, :length, None])
    return matrix


@contextlib.contextmanager
def _float32_matmul() -> Iterator[None]:
    """Matrix products in full float32 within the block: with TF32 or bfloat16 ones (set by
    torch.set_float32_matmul_precision), probabilities would move by ~1e-3 and pixels near the
    threshold would flip."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


def paste_masks_to_rles(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int], threshold: float = MASK_THRESHOLD
) -> list[bytes]:
    """Compressed COCO RLE strings of Mask R-CNN's (N, 1, M, M) mask probabilities pasted into their
    (N, 4) xyxy boxes of an image of `image_size` (height, width) and thresholded: the masks of
    torchvision's paste_masks_in_image (same padding, box expansion and bilinear resize), computed
    only inside each box, a group of boxes at a time, on the masks' device.

    Pixels whose probability is within float rounding (about 1e-7) of `threshold` may come out the
    other way: PyTorch's own CPU and CUDA kernels round differently there too.
    """
    if len(masks) == 0:
        return []
    height, width = (int(v) for v in image_size)
    padded, scale = expand_masks(masks.float(), padding=1)
    padded, in_size = padded[:, 0], padded.shape[-1]
    boxes = expand_boxes(boxes.float(), scale).to(torch.int64)
    box_size = (boxes[:, 2:] - boxes[:, :2] + 1).clamp(min=1)  # the resized mask's (w, h), as paste_mask_in_image
    crop_start = boxes[:, :2].clamp(min=0)
    crop_size = (torch.minimum(boxes[:, 2:] + 1, torch.tensor([width, height], device=boxes.device)) - crop_start).clamp(min=0)
    origins, sizes = crop_start.cpu().numpy(), crop_size.cpu().numpy()
    longest = int(max(sizes[:, 0].max(), sizes[:, 1].max() + 1))
    indices, weights = _sampling(boxes[:, :2], box_size, crop_start, crop_size, longest, in_size)

    def crops_of(group: list[int], crop_width: int, crop_height: int) -> torch.Tensor:
        index = torch.tensor(group, device=masks.device)
        group_indices, group_weights = indices[index], weights[index]
        along_x = _sampling_matrix(group_indices[:, 0], group_weights[:, 0], crop_width, in_size)
        along_y = _sampling_matrix(group_indices[:, 1], group_weights[:, 1], crop_height + 1, in_size)
        columns = torch.bmm(along_x, padded[index].transpose(1, 2))  # (n, crop_width, M + 2): resized along x
        return torch.bmm(columns, along_y.transpose(1, 2)) > threshold  # then along y, column-major

    with _float32_matmul():
        return _encode_crops(crops_of, origins, sizes, height, width)


@contextlib.contextmanager
def unpasted_masks(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, a torchvision Mask R-CNN in eval mode returns its mask probabilities
    unpasted: "raw_masks" (N, 1, 28, 28) and the original "image_size" instead of full-size "masks".
    CocoEvaluator.update pastes and encodes them box by box. The model is restored on exit, even
    after an exception."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    transform = model.transform
    had_own_postprocess = "postprocess" in vars(transform)
    postprocess = transform.postprocess

    def postprocess_keeping_masks(result: list[dict], image_shapes: list, original_image_sizes: list) -> list[dict]:
        raw_masks = [prediction.pop("masks", None) for prediction in result]
        result = postprocess(result, image_shapes, original_image_sizes)
        for prediction, masks, size in zip(result, raw_masks, original_image_sizes):
            if masks is not None:
                prediction["raw_masks"] = masks
                prediction["image_size"] = tuple(int(v) for v in size)
        return result

    transform.postprocess = postprocess_keeping_masks
    try:
        yield
    finally:
        if had_own_postprocess:
            transform.postprocess = postprocess
        else:
            del transform.postprocess


# ----------------------------------------------------------------------------- compact results


def _masks_of(prediction: dict) -> tuple[list[bytes], tuple[int, int]]:
    if "raw_masks" in prediction:
        size = tuple(int(v) for v in prediction["image_size"])
        return paste_masks_to_rles(prediction["raw_masks"], prediction["boxes"], size), size
    if "masks" in prediction:
        return encode_masks(prediction["masks"]), tuple(prediction["masks"].shape[-2:])
    raise ValueError("segm evaluation needs 'masks' (N, 1, H, W) or 'raw_masks' with 'image_size' (see unpasted_masks)")


def compact_result(prediction: dict, iou_types: Sequence[str]) -> dict[str, Any]:
    """One image's model output as small CPU arrays: scores, labels (category ids), and per IoU type
    xywh boxes (float32, as the reference computes them), compressed RLE strings, or keypoints."""
    result: dict[str, Any] = {
        "scores": prediction["scores"].detach().cpu().numpy(),
        "labels": prediction["labels"].detach().cpu().numpy().astype(np.int64),
    }
    for iou_type in iou_types:
        if iou_type == "bbox":
            boxes = prediction["boxes"].detach()
            result["boxes"] = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).cpu().numpy()
        elif iou_type == "segm":
            result["rles"], result["mask_size"] = _masks_of(prediction)
        elif iou_type == "keypoints":
            result["keypoints"] = prediction["keypoints"].detach().flatten(start_dim=1).cpu().numpy()
        else:
            raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
    return result


def coco_results(image_id: int, result: dict[str, Any], iou_type: str) -> list[dict]:
    """The COCO results-file entries of one image's compact result, for one IoU type."""
    if iou_type == "bbox":
        values = [{"bbox": box} for box in result["boxes"].tolist()]
    elif iou_type == "segm":
        size = list(result["mask_size"])
        values = [{"segmentation": {"size": size, "counts": counts.decode("ascii")}} for counts in result["rles"]]
    elif iou_type == "keypoints":
        values = [{"keypoints": keypoints} for keypoints in result["keypoints"].tolist()]
    else:
        raise ValueError(f"unknown iou type {iou_type!r}; expected one of {IOU_TYPES}")
    return [
        {"image_id": image_id, "category_id": label, "score": score, **value}
        for label, score, value in zip(result["labels"].tolist(), result["scores"].tolist(), values)
    ]


# ----------------------------------------------------------------------------- backends


def backend_classes(backend: str) -> tuple[type, type]:
    """The (COCO, COCOeval) classes of an evaluation backend; a UsageError if it cannot be used."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise utils.UsageError(
                "--eval-backend faster_coco_eval: the faster-coco-eval package is not installed; "
                "pip install faster-coco-eval, or pass --eval-backend pycocotools"
            ) from None
        return COCO, COCOeval_faster
    raise utils.UsageError(f"--eval-backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _index(coco_class: type, data: dict) -> Any:
    """A COCO index of `coco_class` over an in-memory annotation dict, without console chatter."""
    coco = coco_class()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth_for(coco_gt: Any, coco_class: type) -> Any:
    if isinstance(coco_gt, coco_class):
        return coco_gt
    data = dict(coco_gt.dataset)
    # Evaluation adds keys to the ground-truth annotations: keep the caller's dicts as they were.
    data["annotations"] = [dict(annotation) for annotation in data.get("annotations", [])]
    return _index(coco_class, data)


def _new_coco_eval(coco_eval_class: type, coco_gt: Any, iou_type: str) -> Any:
    if coco_eval_class.__module__.startswith("faster_coco_eval"):
        # its default reports through logging; summarize() should print its table as pycocotools does
        return coco_eval_class(coco_gt, iouType=iou_type, print_function=print)
    return coco_eval_class(coco_gt, iouType=iou_type)


class CocoEvaluator:
    """Collects detections per image and scores them against `coco_gt` (a pycocotools-style COCO index)."""

    def __init__(self, coco_gt: Any, iou_types: Sequence[str], backend: str = DEFAULT_BACKEND):
        unknown = [t for t in iou_types if t not in IOU_TYPES]
        if unknown:
            raise ValueError(f"unknown iou types {unknown}; expected some of {IOU_TYPES}")
        self.backend = backend
        self._coco_class, coco_eval_class = backend_classes(backend)
        self.coco_gt = coco_gt
        self._gt = _ground_truth_for(coco_gt, self._coco_class)
        self.iou_types = list(iou_types)
        # Created up front, so callers may adjust .params before accumulate(), as with the reference.
        self.coco_eval = {t: _new_coco_eval(coco_eval_class, self._gt, t) for t in self.iou_types}
        self.results: dict[int, dict[str, Any]] = {}

    @property
    def img_ids(self) -> list[int]:
        return sorted(self.results)

    def update(self, predictions: dict[int, dict[str, Any]]) -> None:
        """Keep each image's detections (a later result for the same image id replaces the earlier one)."""
        for image_id, prediction in predictions.items():
            self.results[int(image_id)] = compact_result(prediction, self.iou_types)

    def synchronize_between_processes(self) -> None:
        """Give every rank the union of all ranks' results (numpy arrays and RLE strings, not dicts per detection)."""
        for rank_results in utils.all_gather(self.results):
            self.results.update(rank_results)

    def _load_detections(self, iou_type: str) -> Any:
        detections = [d for image_id in self.img_ids for d in coco_results(image_id, self.results[image_id], iou_type)]
        with contextlib.redirect_stdout(io.StringIO()):
            if detections:
                return self._gt.loadRes(detections)
        # pycocotools' loadRes cannot take an empty list
        dataset = self._gt.dataset
        return _index(self._coco_class, {"images": dataset["images"], "annotations": [], "categories": dataset["categories"]})

    def accumulate(self) -> None:
        """Run the backend's evaluate() and accumulate() over every image seen, once per IoU type."""
        for iou_type, coco_eval in self.coco_eval.items():
            coco_eval.cocoDt = self._load_detections(iou_type)
            coco_eval.params.imgIds = self.img_ids
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval.evaluate()
                coco_eval.accumulate()

    def summarize(self) -> None:
        """Print the 12-number table per IoU type and fill coco_eval[iou_type].stats."""
        for iou_type, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {iou_type}")
            coco_eval.summarize()

"""Instance masks in COCO's run-length encoding (RLE), both ways, without full-size images where they are not needed.

Decoding (training targets): COCO segmentations (polygons, compressed or uncompressed RLE) to (N, H, W)
uint8 masks, filled run by run (`decode_masks`).

Encoding (evaluation, predictions): full-size mask probabilities to compressed RLE strings from each
mask's extent (`encode_masks`); Mask R-CNN's 28x28 mask probabilities pasted into their boxes and
encoded where they change value only (`paste_masks_to_rles`), on the masks' device; and
`unpasted_masks(model)`, under which a torchvision Mask R-CNN returns its masks unpasted, for
paste_masks_to_rles to take.

Every result is pycocotools' own: the same masks as torchvision's paste_masks_in_image plus
pycocotools' encoder, except for a pixel whose probability is within float rounding (~1e-7) of the
threshold (PyTorch's CPU and CUDA kernels differ there too).
"""

import contextlib
import re
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

MASK_THRESHOLD = 0.5  # as the reference: a pixel belongs to the mask when its probability is above this
UNCERTAIN = 1e-4  # probabilities this close to the threshold may round to either side of it: computed, not inferred
WINDOW_PIXELS = 2**20  # pixels computed at once when pasting
MIN_POLYGON_NUMBERS = 6  # x, y of 3 points: the fewest that enclose an area
_POLYGON_PART = re.compile(rb"\[([^\[\]]*)\]")  # the innermost [...] lists: one polygon part each
# What pycocotools raises for a segmentation it cannot draw (wrong nesting, non-numbers, a bad RLE).
SEGMENTATION_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)


# ----------------------------------------------------------------------------- decoding COCO segmentations


def segmentation_to_rle(segmentation: list | dict, height: int, width: int) -> dict | None:
    """One compressed RLE for a COCO segmentation: polygons (one or several parts), or RLE in
    either form (crowd regions use uncompressed counts). None when there is nothing to draw."""
    if isinstance(segmentation, list):
        # a part of fewer than 3 points draws nothing: dropped, as pycocotools and detectron2 drop it
        polygons = [p for p in segmentation if len(p) >= MIN_POLYGON_NUMBERS]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if list(segmentation["size"]) != [height, width]:
        raise ValueError(
            f"its RLE size is {list(segmentation['size'])} but the image's [height, width] is {[height, width]}"
        )
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def polygon_parts(texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """For segmentations as their JSON text: how many parts each has that draw something (an RLE counts as one),
    and how many polygon parts of fewer than 3 points segmentation_to_rle drops. Counts separators rather than
    parsing (COCO's 860k texts in under a second): a one-part polygon is "[[x, y, ...]]"."""
    kept = np.zeros(len(texts), dtype=np.int64)
    dropped = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        text = bytes(text).strip()
        if text.startswith(b"{"):
            kept[i] = 1
            continue
        brackets = text.count(b"[")
        if brackets < 2:  # [] (box-only exports write it): no part at all
            continue
        if brackets == 2:  # one part: numbers are commas + 1
            good = text.count(b",") + 1 >= MIN_POLYGON_NUMBERS
            kept[i], dropped[i] = good, not good
            continue
        numbers = [part.count(b",") + 1 if part.strip() else 0 for part in _POLYGON_PART.findall(text)]
        kept[i] = sum(n >= MIN_POLYGON_NUMBERS for n in numbers)
        dropped[i] = len(numbers) - kept[i]
    return kept, dropped


def rle_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths in a compressed COCO RLE string, decoded as pycocotools does (rleFrString), but vectorised.

    Each run is a signed number in 5-bit chunks (0x20 marks "more", 0x10 the sign of the last), offset by 48;
    from the fourth run on, it is stored as the difference to the run two before.
    """
    chars = np.frombuffer(counts.encode() if isinstance(counts, str) else counts, dtype=np.uint8).astype(np.int64) - 48
    last = np.flatnonzero((chars & 0x20) == 0)  # each run's final chunk
    first = np.concatenate([[0], last[:-1] + 1]).astype(np.int64)
    chunks = last - first + 1
    position = np.arange(len(chars)) - np.repeat(first, chunks)
    runs = np.add.reduceat((chars & 0x1F) << (5 * position), first) if len(last) else np.zeros(0, dtype=np.int64)
    negative = (chars[last] & 0x10) != 0
    runs[negative] -= np.left_shift(1, 5 * chunks[negative])
    runs[1::2] = np.cumsum(runs[1::2])
    runs[2::2] = np.cumsum(runs[2::2])
    return runs


def _fill_runs(flat: np.ndarray, runs: np.ndarray) -> None:
    """Set to 1 the odd runs (zeros come first) of a zeroed column-major mask."""
    if int(runs.sum()) != len(flat):
        raise ValueError(f"its RLE runs cover {int(runs.sum())} pixels, not the image's {len(flat)}")
    ones = runs[1::2]
    total = int(ones.sum())
    if total > len(flat) // 8:  # a large object: one pass over the whole mask is cheaper than indexing
        flat[:] = np.repeat(np.arange(len(runs), dtype=np.uint8) & 1, runs)
        return
    starts = (np.cumsum(runs) - runs)[1::2]
    flat[np.arange(total) + np.repeat(starts - (np.cumsum(ones) - ones), ones)] = 1


def decode_masks(segmentations: list, height: int, width: int) -> np.ndarray:
    """Decode COCO segmentations into an (N, H, W) uint8 array; missing ones are all zero.

    Hand-written where pycocotools has mask.decode, because that is 4x slower here: it writes every pixel
    (most of a mask is background) and copies the result twice. Each mask is filled column-major, as RLE
    runs go, so the (N, H, W) result is a strided view of (N, W, H) memory.
    """
    transposed = np.zeros((len(segmentations), width, height), dtype=np.uint8)
    for i, segmentation in enumerate(segmentations):
        rle = segmentation_to_rle(segmentation, height, width)
        if rle is not None:
            _fill_runs(transposed[i].reshape(-1), rle_counts(rle["counts"]))
    return transposed.transpose(0, 2, 1)


# ----------------------------------------------------------------------------- encoding masks as COCO RLE


def _nonzero(bits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Indices of the True elements of a bool tensor, one tensor per dimension, on its device. On the
    CPU through numpy's nonzero, about 4x faster than torch.nonzero there (measured on 2.7M elements)."""
    if bits.device.type == "cpu":
        return tuple(torch.from_numpy(index) for index in np.nonzero(bits.numpy()))
    return torch.nonzero(bits, as_tuple=True)


def _counts_from_changes(
    index: np.ndarray, mask_index: np.ndarray, count: int, height: int, width: int
) -> list[np.ndarray]:
    """Uncompressed COCO RLE counts of `count` masks from the full-image indices where each one
    changes value (ascending, grouped by mask_index ascending), in column-major order.

    A change back to 0 just past a column that ends on a 1 lands on the next column's first pixel,
    where a run that goes on from one column into the next one also changes back to 1: such pairs
    cancel. COCO counts are the lengths of the runs between changes, starting with a run of 0s, and
    write no empty run after a mask that is on at the image's last pixel.
    """
    repeated = np.flatnonzero((index[1:] == index[:-1]) & (mask_index[1:] == mask_index[:-1]))
    keep = index < height * width
    keep[repeated] = keep[repeated + 1] = False
    index, mask_index = index[keep], mask_index[keep]
    starts, ends = (
        np.searchsorted(mask_index, np.arange(count)),
        np.searchsorted(mask_index, np.arange(count), side="right"),
    )
    # each mask's changes between a 0 in front and the image's size behind: the runs are their differences
    bounded = np.insert(index, np.stack([starts, ends], axis=1).ravel(), np.tile([0, height * width], count))
    runs = np.delete(
        np.diff(bounded), ends[:-1] + 2 * np.arange(count - 1) + 1
    )  # from one mask's end to the next one's start
    return np.split(runs, np.cumsum(ends - starts + 1)[:-1])


def _compress(counts: list[np.ndarray], height: int, width: int) -> list[bytes]:
    """pycocotools' compressed RLE strings for uncompressed counts (its C encoder, one call per image)."""
    if not counts:
        return []
    rles = mask_utils.frPyObjects([{"size": [height, width], "counts": c} for c in counts], height, width)
    return [rle["counts"] for rle in rles]


def _size_groups(
    widths: Sequence[int], heights: Sequence[int], waste: float = 1.5, slack: int = 32768
) -> list[list[int]]:
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


def _first_and_size(rows_or_columns: torch.Tensor) -> torch.Tensor:
    """For each row of a (N, L) bool tensor: the first True index and the span to the last one (0, 0 if none)."""
    length = rows_or_columns.shape[1]
    positions = torch.arange(length, device=rows_or_columns.device)
    first = torch.where(rows_or_columns, positions, length).amin(dim=1)
    last = torch.where(rows_or_columns, positions, -1).amax(dim=1)
    size = (last - first + 1).clamp(min=0)
    return torch.stack([torch.where(size > 0, first, 0), size], dim=1)


def _changes_in_crops(crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crop, column, row) of every element of (n, columns, rows) bool crops that differs from the
    one before it in column-major order (a crop's first element: from 0)."""
    flat = crops.reshape(len(crops), -1)
    changes = torch.empty_like(flat)
    changes[:, 0] = flat[:, 0]
    torch.ne(flat[:, 1:], flat[:, :-1], out=changes[:, 1:])
    member, position = (index.cpu().numpy() for index in _nonzero(changes))
    return (member, *np.divmod(position, crops.shape[2]))


def encode_masks(masks: torch.Tensor, threshold: float = MASK_THRESHOLD) -> list[bytes]:
    """Compressed COCO RLE strings of (N, 1, H, W) full-size mask probabilities above `threshold`:
    what the reference gets from pycocotools one mask at a time, from each mask's extent only."""
    if len(masks) == 0:
        return []
    height, width = masks.shape[-2:]
    binary = masks[:, 0] > threshold
    # the bytes' amax, not any(): 10x to 80x faster on the CPU for (100, 480, 640) masks
    on_bytes = binary.view(torch.uint8)
    x_extent, y_extent = _first_and_size(on_bytes.amax(dim=1) > 0), _first_and_size(on_bytes.amax(dim=2) > 0)
    origins = torch.stack([x_extent[:, 0], y_extent[:, 0]], dim=1).cpu().numpy()
    sizes = torch.stack([x_extent[:, 1], y_extent[:, 1]], dim=1).cpu().numpy()
    counts: list[np.ndarray] = [np.array([height * width])] * len(masks)
    for group in _size_groups(sizes[:, 0].tolist(), sizes[:, 1].tolist()):
        crop_width, crop_height = sizes[group].max(axis=0).tolist()
        if crop_width == 0 or crop_height == 0:
            continue  # all zero
        # crops column by column, each column followed by at least one 0
        crops = torch.zeros(len(group), crop_width, crop_height + 1, dtype=torch.bool, device=masks.device)
        for j, i in enumerate(group):
            (x, y), (w, h) = origins[i], sizes[i]
            crops[j, :w, :h] = binary[i, y : y + h, x : x + w].T
        member, column, row = _changes_in_crops(crops)
        left, top = origins[group, 0], origins[group, 1]
        index = (left[member] + column) * height + top[member] + row
        for i, c in zip(group, _counts_from_changes(index, member, len(group), height, width)):
            counts[i] = c
    return _compress(counts, height, width)


def _resampling(scale: torch.Tensor, positions: torch.Tensor, in_size: int) -> tuple[torch.Tensor, ...]:
    """Bilinear resampling along one axis as F.interpolate(align_corners=False) does it: for output
    `positions`, at `scale` source pixels per output pixel, the low and high source indices and weights."""
    # scale * (position + 0.5) - 0.5 rounded once, as PyTorch's kernel computes it (a fused multiply-add)
    source = (scale.double() * (positions.double() + 0.5) - 0.5).float().clamp_(min=0)
    low = source.floor()
    weight_high = source - low
    low = low.long().clamp_(max=in_size - 1)
    return low, (low + 1).clamp_(max=in_size - 1), 1 - weight_high, weight_high


class _PastedColumns:
    """Mask R-CNN masks pasted into an image as torchvision's paste_masks_in_image does (padded by one
    pixel, boxes expanded to match, bilinear resize), held as columns: every image column that a box
    covers, resampled along x from the padded mask ((C, M + 2) `values`), and each box's rows'
    sampling along y. A pixel is then two products away, and pixels are computed only between the
    source rows where a column may cross the threshold: the work grows with the boxes' widths, not
    their areas."""

    def __init__(self, masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]):
        height, width = image_size
        padded, scale = expand_masks(masks.float(), padding=1)
        self.size = padded.shape[-1]
        boxes = expand_boxes(boxes.float(), scale).to(torch.int64)
        box_start, box_end = boxes[:, :2], boxes[:, 2:] + 1
        box_size = (box_end - box_start).clamp(min=1)  # the resized mask's (w, h), as paste_mask_in_image
        self.crop_start = box_start.clamp(min=0)
        crop_end = torch.minimum(box_end, torch.tensor([width, height], device=masks.device))
        self.cut_at_bottom = crop_end[:, 1] < box_end[:, 1]
        self.offset = self.crop_start - box_start  # where the crop starts in the resized mask
        self.scale = (
            torch.full_like(box_size, self.size, dtype=torch.float32) / box_size.float()
        )  # source pixels per pixel
        widths, self.heights = (crop_end - self.crop_start).clamp(min=0).unbind(1)
        self._sample_columns(padded[:, 0], widths)
        self._sample_rows()

    def _sample_columns(self, padded: torch.Tensor, widths: torch.Tensor) -> None:
        """Every crop column of every mask, in order: its mask, x within the crop, height, values."""
        self.column_mask = torch.repeat_interleave(torch.arange(len(widths), device=widths.device), widths)
        first_column = (torch.cumsum(widths, 0) - widths).index_select(0, self.column_mask)
        self.column_x = torch.arange(len(self.column_mask), device=widths.device) - first_column
        self.column_height = self.heights.index_select(0, self.column_mask)
        self.values = self._resampled_columns(padded)

    def _sample_rows(self) -> None:
        """Each mask's crop rows: their two source rows and weights, and where each source segment starts."""
        self.row_count = max(int(self.heights.max()), 1)
        rows = torch.arange(self.row_count, device=self.heights.device)
        low, high, weight_low, weight_high = _resampling(self.scale[:, 1:2], rows + self.offset[:, 1:2], self.size)
        self.row_sources = torch.stack([low, high], dim=-1).reshape(-1, 2)  # row k * row_count + r: mask k's crop row r
        self.row_weights = torch.stack([weight_low, weight_high], dim=-1).reshape(-1, 2)
        # Mask k's crop rows sampled between source rows j and j + 1: segment_start[k, j] to segment_start[k, j+1] - 1.
        low = torch.where(rows < self.heights[:, None], low, self.size)
        segments = torch.arange(self.size + 1, device=low.device).expand(len(low), -1).contiguous()
        self.segment_start = torch.searchsorted(low, segments)

    def _resampled_columns(self, padded: torch.Tensor) -> torch.Tensor:
        """(C, M + 2): each crop column's values down the padded mask, resampled along x."""
        mask, size = self.column_mask, self.size
        low, high, weight_low, weight_high = _resampling(
            self.scale[:, 0].index_select(0, mask), self.column_x + self.offset[:, 0].index_select(0, mask), size
        )
        by_column = padded.transpose(1, 2).reshape(-1, size)  # row k * size + x: mask k's column x
        first = mask * size
        return (
            by_column.index_select(0, first + low) * weight_low[:, None]
            + by_column.index_select(0, first + high) * weight_high[:, None]
        )

    def above(self, columns: torch.Tensor, rows: torch.Tensor, threshold: float) -> torch.Tensor:
        """Whether pixel `rows` (from the crop's top) of `columns` is above the threshold; False outside the crop."""
        inside = (rows >= 0) & (rows < self.column_height.index_select(0, columns))
        at = self.column_mask.index_select(0, columns) * self.row_count + rows.clamp(0, self.row_count - 1)
        sources, weights = self.row_sources.index_select(0, at), self.row_weights.index_select(0, at)
        values = torch.take(self.values, (columns * self.size)[:, None] + sources)
        return (values[:, 0] * weights[:, 0] + values[:, 1] * weights[:, 1] > threshold) & inside

    def _segments_to_compute(
        self, threshold: float
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(columns, segments) where a column's pixels between source rows j and j + 1 may not all lie
        on one side of the threshold. They are weighted means of the column's values at both rows:
        - crossing: the values lie clearly on either side (by far more than float rounding), so the
          pixels cross the threshold once, at a row that follows from the values;
        - near: a value lies on the threshold or close to it, so that rounding decides (masks at
          exactly 0.5, from saturated or untrained models): every pixel must be computed."""
        side = (self.values > threshold + UNCERTAIN).to(torch.int8) - (self.values < threshold - UNCERTAIN).to(
            torch.int8
        )
        product = side[:, 1:] * side[:, :-1]  # -1: on either side, 0: near, 1: on one side
        return _nonzero(product < 0), _nonzero(product == 0)

    def _first_rows_past(self, columns: torch.Tensor, segments: torch.Tensor, threshold: float) -> torch.Tensor:
        """Where a column's values, linear between source rows `segments` and `segments` + 1, cross the
        threshold: the first crop row whose source coordinate is at or past the crossing."""
        flat = self.values.view(-1)
        low = flat.index_select(0, columns * self.size + segments).double()
        high = flat.index_select(0, columns * self.size + segments + 1).double()
        crossing = segments.double() + (threshold - low) / (high - low)
        mask = self.column_mask.index_select(0, columns)
        scale, offset = self.scale[:, 1].double().index_select(0, mask), self.offset[:, 1].index_select(0, mask)
        return torch.ceil((crossing + 0.5) / scale - 0.5 - offset).long()

    def _changes_at_crossings(
        self, columns: torch.Tensor, segments: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Changes where values clearly on either side of the threshold cross it: at the first row past
        the crossing, or (float rounding, several crossings between two rows of a small box) a row
        before or after it. Pixels further away are clearly on one side."""
        first = self._first_rows_past(columns, segments, threshold) - 2
        return self._changes_in_windows(columns, first, torch.full_like(first, 4), 4, threshold)

    def _changes_in_segments(
        self, columns: torch.Tensor, segments: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every change among the rows of the given segments, each computed, with the row before and
        the row after them (so that changes at the segments' ends are seen too)."""
        at = self.column_mask.index_select(0, columns) * (self.size + 1) + segments
        first = self.segment_start.view(-1).index_select(0, at) - 1
        lengths = self.segment_start.view(-1).index_select(0, at + 1) - first + 1
        longest = int(lengths.max()) if len(lengths) else 1
        per_part = max(1, WINDOW_PIXELS // longest)  # bounded memory, even where every pixel is uncertain
        parts = [
            self._changes_in_windows(
                columns[i : i + per_part], first[i : i + per_part], lengths[i : i + per_part], longest, threshold
            )
            for i in range(0, len(columns), per_part)
        ]
        return torch.cat([c for c, _ in parts] + [columns[:0]]), torch.cat([r for _, r in parts] + [first[:0]])

    def _changes_in_windows(
        self, columns: torch.Tensor, first: torch.Tensor, lengths: torch.Tensor, longest: int, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Changes within windows of `lengths` rows from `first` down each of `columns`."""
        steps = torch.arange(longest, device=columns.device)
        rows = first[:, None] + steps
        columns = columns[:, None].expand_as(rows)
        on = self.above(columns.reshape(-1), rows.reshape(-1), threshold).view(rows.shape)
        changed = (on[:, 1:] != on[:, :-1]) & (steps[1:] < lengths[:, None])
        return columns[:, 1:][changed], rows[:, 1:][changed]

    def _cut_edges(self, threshold: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Changes at crops cut by the image's top or bottom edge, which start or end inside the mask."""
        (cut_at_top,) = _nonzero((self.offset[:, 1] > 0).index_select(0, self.column_mask))
        starting_on = cut_at_top[self.above(cut_at_top, torch.zeros_like(cut_at_top), threshold)]
        (cut_at_bottom,) = _nonzero(self.cut_at_bottom.index_select(0, self.column_mask))
        ends = self.column_height.index_select(0, cut_at_bottom)
        ending_on = self.above(cut_at_bottom, ends - 1, threshold)
        return [(starting_on, torch.zeros_like(starting_on)), (cut_at_bottom[ending_on], ends[ending_on])]

    def changes(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(column, crop row) of every pixel that differs from the one above it (the crop's first
        row from 0, the row past its end back to 0), in column-major order."""
        crossing, near = self._segments_to_compute(threshold)
        changes = [
            self._changes_at_crossings(*crossing, threshold),
            self._changes_in_segments(*near, threshold),
            *self._cut_edges(threshold),
        ]
        keys = torch.cat([c * (self.row_count + 1) + r for c, r in changes])
        keys = np.sort(keys.cpu().numpy(), kind="stable")  # nearly sorted already: a few merges
        keys = keys[np.diff(keys, prepend=-1) != 0]  # a change found twice
        return np.divmod(keys, self.row_count + 1)


def paste_masks_to_rles(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int], threshold: float = MASK_THRESHOLD
) -> list[bytes]:
    """Compressed COCO RLE strings of Mask R-CNN's (N, 1, M, M) mask probabilities pasted into their
    (N, 4) xyxy boxes of an image of `image_size` (height, width) and thresholded: the masks of
    torchvision's paste_masks_in_image, computed where they change value only, on the masks' device.

    Pixels whose probability is within float rounding (about 1e-7) of `threshold` may come out the
    other way: PyTorch's own CPU and CUDA kernels round differently there too.
    """
    if len(masks) == 0:
        return []
    height, width = (int(v) for v in image_size)
    pasted = _PastedColumns(masks, boxes, (height, width))
    column, row = pasted.changes(threshold)
    column_mask, column_x = pasted.column_mask.cpu().numpy(), pasted.column_x.cpu().numpy()
    crop_start = pasted.crop_start.cpu().numpy()
    mask_index = column_mask[column]
    index = (crop_start[mask_index, 0] + column_x[column]) * height + crop_start[mask_index, 1] + row
    return _compress(_counts_from_changes(index, mask_index, len(masks), height, width), height, width)


@contextlib.contextmanager
def unpasted_masks(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, a torchvision Mask R-CNN in eval mode returns its mask probabilities
    unpasted: "raw_masks" (N, 1, 28, 28) and the original "image_size" instead of full-size "masks".
    CocoEvaluator.update pastes and encodes them (paste_masks_to_rles). The model is restored on
    exit, even after an exception. A deployed model (deployed.OnnxModel) does it by its own method."""
    if hasattr(model, "returning_unpasted_masks"):
        with model.returning_unpasted_masks():
            yield
        return
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

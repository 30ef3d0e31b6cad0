"""Aspect-ratio grouped batching: images of similar shape share a batch, so little of it is padding.

Ratios come from the dataset's metadata (COCO's width and height), never from opening images.
"""

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler, Subset
from torchvision.transforms.v2 import functional as F


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` indices from `sampler`, each drawn from one group where possible.

    Indices are buffered per group and a batch is yielded as soon as a group has `batch_size` of
    them. What is left over at the end is batched in group order (so mixed batches are as rare as
    possible), the last batch possibly smaller. Every index the sampler gives is used once, and
    there are always ceil(len(sampler) / batch_size) batches: equal on every rank under a
    DistributedSampler (which pads its shards to one length), and equal to len(self) (vision #9127).
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: defaultdict[int, list[int]] = defaultdict(list)
        for index in self.sampler:
            group = buffers[self.group_ids[index]]
            group.append(index)
            if len(group) == self.batch_size:
                yield group.copy()
                group.clear()
        leftovers = [index for group_id in sorted(buffers) for index in buffers[group_id]]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)


def _quantize(values: Sequence[float], bins: Sequence[float]) -> list[int]:
    return [bisect.bisect_right(bins, v) for v in values]


def _aspect_ratios(dataset: torch.utils.data.Dataset) -> list[float]:
    """width / height per item: from the dataset's metadata, through Subsets; else by loading each image."""
    if isinstance(dataset, Subset):
        ratios = _aspect_ratios(dataset.dataset)
        return [ratios[i] for i in dataset.indices]
    if hasattr(dataset, "aspect_ratios"):
        return list(dataset.aspect_ratios)
    print(f"{type(dataset).__name__} has no aspect_ratios metadata: loading every image to measure it (slow)")
    ratios = []
    for i in range(len(dataset)):
        height, width = F.get_size(dataset[i][0])
        ratios.append(width / height)
    return ratios


def create_aspect_ratio_groups(dataset: torch.utils.data.Dataset, k: int = 0) -> list[int]:
    """A group id per item: its aspect ratio binned into 2k + 1 log-spaced bins between 1/2 and 2 (and two tails)."""
    ratios = _aspect_ratios(dataset)
    bins = (2 ** torch.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]
    groups = _quantize(ratios, bins)
    counts = Counter(groups)
    print(f"Aspect-ratio bins: {[round(b, 3) for b in bins]}")
    print(f"Images per group: {[counts.get(g, 0) for g in range(len(bins) + 1)]}")
    return groups

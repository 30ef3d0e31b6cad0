"""GroupedBatchSampler and create_aspect_ratio_groups."""

import math
import random

import PIL.Image
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler, Subset

import coco_utils
from group_by_aspect_ratio import GroupedBatchSampler, create_aspect_ratio_groups

LAYOUTS = ["one_group", "two_groups", "three_uneven", "alternating", "random4"]


def make_groups(size: int, layout: str, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    if layout == "one_group":
        return [0] * size
    if layout == "two_groups":
        return [i % 2 for i in range(size)]
    if layout == "three_uneven":
        return [0 if i % 7 == 0 else (1 if i % 3 else 2) for i in range(size)]
    if layout == "alternating":
        return [(i // 3) % 2 for i in range(size)]
    return [rng.randrange(4) for _ in range(size)]


def check_batches(batches: list[list[int]], expected_indices: list[int], batch_size: int, groups: list[int]) -> None:
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == sorted(expected_indices)  # every index once (duplicates only where the sampler repeats)
    assert len(batches) == math.ceil(len(expected_indices) / batch_size)
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert all(len(batch) == batch_size for batch in batches[:-1])
    # Mixed batches only come from the leftovers at the end: at most one per group boundary.
    mixed = [k for k, batch in enumerate(batches) if len({groups[i] for i in batch}) > 1]
    num_groups = len(set(groups[i] for i in expected_indices))
    assert len(mixed) <= max(num_groups - 1, 0)
    if mixed:
        leftover_batches = math.ceil(num_groups * (batch_size - 1) / batch_size) + 1
        assert mixed[0] >= len(batches) - leftover_batches


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", [1, 2, 5, 7, 16, 33, 100])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 8])
def test_every_index_once_and_len_matches(size, batch_size, layout):
    groups = make_groups(size, layout)
    generator = torch.Generator().manual_seed(size * 10 + batch_size)
    sampler = RandomSampler(range(size), generator=generator)
    batch_sampler = GroupedBatchSampler(sampler, groups, batch_size)
    batches = list(batch_sampler)
    assert len(batch_sampler) == len(batches)
    check_batches(batches, list(range(size)), batch_size, groups)


def test_sequential_single_group_is_plain_batching():
    batches = list(GroupedBatchSampler(SequentialSampler(range(10)), [0] * 10, 4))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_groups_are_batched_together():
    groups = [0, 1, 0, 1, 0, 1, 0, 1, 0]
    batches = list(GroupedBatchSampler(SequentialSampler(range(9)), groups, 2))
    assert batches == [[0, 2], [1, 3], [4, 6], [5, 7], [8]]


def test_leftovers_are_batched_in_group_order():
    groups = [2, 0, 1, 0, 2]
    batches = list(GroupedBatchSampler(SequentialSampler(range(5)), groups, 3))
    # no group reaches 3, so everything is leftover, sorted by group: [1, 3] (group 0), [2] (1), [0, 4] (2)
    assert batches == [[1, 3, 2], [0, 4]]


def test_empty_sampler_gives_no_batches():
    batch_sampler = GroupedBatchSampler(SequentialSampler(range(0)), [], 3)
    assert list(batch_sampler) == []
    assert len(batch_sampler) == 0


@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("size", [7, 10, 23, 31])
@pytest.mark.parametrize("batch_size", [2, 4])
@pytest.mark.parametrize("layout", ["two_groups", "three_uneven", "random4"])
def test_every_rank_gives_the_same_number_of_batches(num_replicas, size, batch_size, layout):
    groups = make_groups(size, layout, seed=size)
    counts, seen = [], []
    for rank in range(num_replicas):
        sampler = DistributedSampler(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        batch_sampler = GroupedBatchSampler(sampler, groups, batch_size)
        batches = list(batch_sampler)
        assert len(batch_sampler) == len(batches)
        check_batches(batches, list(sampler), batch_size, groups)
        counts.append(len(batches))
        seen.extend(i for batch in batches for i in batch)
    assert len(set(counts)) == 1
    assert counts[0] == math.ceil(math.ceil(size / num_replicas) / batch_size)
    assert set(seen) == set(range(size))  # all ranks together cover the dataset


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_below_one_raises(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        GroupedBatchSampler(SequentialSampler(range(4)), [0] * 4, batch_size)


# ----------------------------------------------------------------------------- aspect-ratio groups


class RatioDataset(torch.utils.data.Dataset):
    def __init__(self, ratios):
        self.aspect_ratios = list(ratios)

    def __len__(self):
        return len(self.aspect_ratios)

    def __getitem__(self, index):
        raise AssertionError("create_aspect_ratio_groups loaded an item")


def test_k0_splits_at_one():
    groups = create_aspect_ratio_groups(RatioDataset([0.5, 0.99, 1.0, 1.01, 3.0]), k=0)
    assert groups == [0, 0, 1, 1, 1]


def test_k1_bins_at_half_one_and_two():
    ratios = [0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 4.0]
    groups = create_aspect_ratio_groups(RatioDataset(ratios), k=1)
    assert groups == [0, 1, 1, 2, 2, 3, 3]


def test_k3_bins_are_log_spaced():
    edges = [2 ** (i / 3) for i in range(-3, 4)]  # 1/2 ... 2, seven edges, eight groups
    just_above = [e * 1.001 for e in edges]
    ratios = [0.25] + just_above
    groups = create_aspect_ratio_groups(RatioDataset(ratios), k=3)
    assert groups == list(range(8))
    assert create_aspect_ratio_groups(RatioDataset([e * 0.999 for e in edges]), k=3) == list(range(7))


def test_groups_are_printed(capsys):
    create_aspect_ratio_groups(RatioDataset([0.6, 0.6, 1.3]), k=0)
    out = capsys.readouterr().out
    assert "[1.0]" in out
    assert "[2, 1]" in out


def forbid_image_open(monkeypatch):
    def no_open(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(PIL.Image, "open", no_open)


def test_uses_metadata_through_nested_subsets(quirky_root, monkeypatch):
    ds = coco_utils.get_coco(quirky_root, "train", transforms=None)  # ratios 1.25, 0.6, 1.0
    forbid_image_open(monkeypatch)
    with pytest.raises(AssertionError):
        ds[0]
    assert create_aspect_ratio_groups(ds, k=0) == [1, 0, 1]
    assert create_aspect_ratio_groups(Subset(ds, [1, 2]), k=0) == [0, 1]
    assert create_aspect_ratio_groups(Subset(Subset(ds, [2, 1, 0]), [1, 2, 1]), k=0) == [0, 1, 0]
    assert create_aspect_ratio_groups(Subset(ds, [0, 1, 2]), k=1) == [2, 1, 2]


def test_uses_metadata_on_synthetic(synthetic_root, monkeypatch):
    ds = coco_utils.get_coco(synthetic_root, "train", transforms=None)
    forbid_image_open(monkeypatch)
    groups = create_aspect_ratio_groups(Subset(ds, list(range(0, len(ds), 2))), k=0)
    expected = [0 if img["width"] < img["height"] else 1 for img in ds.images[::2]]
    assert groups == expected
    assert set(groups) == {0, 1}


class ImageDataset(torch.utils.data.Dataset):
    """No aspect_ratios attribute: the fallback loads items."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        height, width = self.sizes[index]
        return torch.zeros(3, height, width, dtype=torch.uint8), {}


def test_falls_back_to_loading_items():
    ds = ImageDataset([(10, 20), (20, 10), (8, 8), (30, 10)])
    assert create_aspect_ratio_groups(ds, k=1) == [3, 1, 2, 0]
    assert create_aspect_ratio_groups(Subset(ds, [3, 0]), k=1) == [0, 3]

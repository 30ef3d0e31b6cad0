"""Samplers and the data loaders they drive: the resumable training order, and unpadded evaluation shards.

A training epoch's order is drawn from (seed, epoch) alone and each sample's augmentation from
(seed, epoch, image index), so a run resumed mid-epoch sees exactly the batches, and the augmented
images, the interrupted run would have seen, whichever DataLoader worker loads them. Aspect-ratio
grouping (group_by_aspect_ratio.py) sits between the order and the batches.
"""

import argparse
import signal
from collections.abc import Iterable, Iterator
from typing import Any

import torch

import distributed
import utils
from group_by_aspect_ratio import GroupedBatchSampler, create_aspect_ratio_groups
from transforms import copypaste_collate_fn


class InferenceSampler(torch.utils.data.Sampler[int]):
    """This rank's share of the indices (rank, rank + world_size, ...), in order and without padding:
    unlike DistributedSampler, no image is evaluated twice."""

    def __init__(self, dataset_size: int, rank: int | None = None, world_size: int | None = None):
        rank = distributed.get_rank() if rank is None else rank
        world_size = distributed.get_world_size() if world_size is None else world_size
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


_MIX = 0x9E3779B97F4A7C15  # an odd 64-bit constant: spreads (seed, epoch, index) over distinct generator seeds


def _mixed_seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * _MIX + part + 1) % 2**63
    return value


class TrainSampler(torch.utils.data.Sampler[int]):
    """A new shuffle every epoch, drawn from (seed, epoch) alone, and this rank's share of it.

    Like DistributedSampler, the order is padded (by repeating its start) to a multiple of the
    world size and dealt out rank, rank + world_size, ...; unlike RandomSampler, a resumed run
    sees exactly the order the interrupted one saw. `state_dict()` records the epoch's order.
    """

    def __init__(self, dataset_size: int, seed: int, rank: int | None = None, world_size: int | None = None):
        self.dataset_size = dataset_size
        self.seed = seed
        self.rank = distributed.get_rank() if rank is None else rank
        self.world_size = distributed.get_world_size() if world_size is None else world_size
        self.epoch = 0
        self._saved_order: torch.Tensor | None = None  # an order read from a checkpoint, for its epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._saved_order = None
        self.epoch = epoch

    def epoch_order(self) -> torch.Tensor:
        """Every rank's indices for this epoch, before sharding."""
        if self._saved_order is not None:
            return self._saved_order
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed, self.epoch))
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        padded = order.repeat(-(-len(self) * self.world_size // max(len(order), 1)))[: len(self) * self.world_size]
        return iter(padded[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return -(-self.dataset_size // self.world_size)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "order": self.epoch_order()}

    def load_state_dict(self, state: dict) -> bool:
        """Take the seed and the saved epoch's order; an order for another dataset size is dropped (returns False)."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        order = state["order"]
        fits = len(order) == self.dataset_size
        self._saved_order = order.long() if fits else None
        return fits


class ResumableBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler for training: starts an epoch after its first `start` batches (a
    resumed epoch) and pairs each index with a seed drawn from (seed, epoch, index).

    SeededDataset seeds each sample's random augmentation with that seed, so a sample is
    augmented the same way whichever DataLoader worker loads it and wherever the epoch resumed.
    """

    def __init__(self, batch_sampler: Iterable[list[int]], seed: int):
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.start:
                yield [(index, _mixed_seed(self.seed, self.epoch, index)) for index in batch]

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.start, 0)


class SeededDataset(torch.utils.data.Dataset):
    """dataset[(index, seed)] = (seed, the wrapped dataset[index]), made with torch's CPU generator
    seeded by `seed` (and restored afterwards: in the main process, training's own random stream
    is left untouched). SeededCollate batches such pairs."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return seed, self.dataset[index]


class SeededCollate:
    """Batches SeededDataset's (seed, sample) pairs with `collate_fn`, under a seed drawn from the
    samples' seeds: batch-level random augmentation (copy-paste) resumes exactly too."""

    def __init__(self, collate_fn=utils.collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, batch: list[tuple[int, Any]]) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(_mixed_seed(*(seed for seed, _ in batch)))
            return self.collate_fn([sample for _, sample in batch])


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's start: Ctrl-C reaches every process of the terminal's group, and SLURM signals every
    process of a job; the main process decides when to stop (engine.StopSignal) and shuts its workers down."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def build_data_loaders(args: argparse.Namespace, dataset_train, dataset_test, device: torch.device, seed: int):
    """Aspect-ratio grouped, sharded and resumable training batches; unpadded evaluation shards.

    Returns the training sampler (whose order a checkpoint records), the batch sampler (which
    starts a resumed epoch at its next batch) and both loaders. The loaders get their own random
    generators: drawing worker seeds must not move training's random stream.
    """
    pin = device.type == "cuda"
    loader_test = torch.utils.data.DataLoader(
        dataset_test,
        batch_size=1,
        sampler=InferenceSampler(len(dataset_test)),
        num_workers=args.workers,
        collate_fn=utils.collate_fn,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals,
    )
    if dataset_train is None:
        return None, None, None, loader_test
    train_sampler = TrainSampler(len(dataset_train), seed)
    if args.aspect_ratio_group_factor >= 0:
        group_ids = create_aspect_ratio_groups(dataset_train, k=args.aspect_ratio_group_factor)
        grouped = GroupedBatchSampler(train_sampler, group_ids, args.batch_size)
    else:
        grouped = torch.utils.data.BatchSampler(train_sampler, args.batch_size, drop_last=True)
    batch_sampler = ResumableBatchSampler(grouped, seed)
    loader_train = torch.utils.data.DataLoader(
        SeededDataset(dataset_train),
        batch_sampler=batch_sampler,
        num_workers=args.workers,
        collate_fn=SeededCollate(copypaste_collate_fn if args.use_copypaste else utils.collate_fn),
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals,
    )
    return train_sampler, batch_sampler, loader_train, loader_test

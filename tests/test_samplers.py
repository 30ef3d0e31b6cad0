"""samplers.py: evaluation shards without padding, the resumable training order (one shuffle per epoch from the
seed, resumed mid-epoch exactly), and samples seeded by (seed, epoch, index) whatever the worker."""

import pytest
import torch

import samplers


@pytest.mark.parametrize("size", [0, 1, 5, 9, 10, 17])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_inference_sampler_shards_cover_each_index_once(size, world_size):
    shards = [list(samplers.InferenceSampler(size, rank=rank, world_size=world_size)) for rank in range(world_size)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(size))  # every index exactly once: no padding, no repeats
    for rank, shard in enumerate(shards):
        assert shard == sorted(shard)
        assert len(samplers.InferenceSampler(size, rank=rank, world_size=world_size)) == len(shard)
        assert all(i % world_size == rank for i in shard)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_inference_sampler_defaults_to_a_single_process():
    assert list(samplers.InferenceSampler(4)) == [0, 1, 2, 3]


@pytest.mark.parametrize(("size", "world_size"), [(10, 1), (10, 3), (7, 4), (2, 3)])
def test_train_sampler_shards_one_padded_shuffle_per_epoch(size, world_size):
    shards = [list(samplers.TrainSampler(size, seed=5, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == -(-size // world_size)
    dealt = [shards[i % world_size][i // world_size] for i in range(len(shards[0]) * world_size)]
    order = samplers.TrainSampler(size, seed=5).epoch_order().tolist()
    assert sorted(order) == list(range(size))
    assert dealt == (order * world_size)[: len(dealt)]  # the epoch's order, padded with its own start


def test_train_sampler_order_depends_on_seed_and_epoch_only():
    a, b = samplers.TrainSampler(50, seed=1), samplers.TrainSampler(50, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != list(samplers.TrainSampler(50, seed=1))
    assert list(samplers.TrainSampler(50, seed=2)) != list(samplers.TrainSampler(50, seed=1))


def test_train_sampler_state_round_trips_through_a_checkpoint_file(tmp_path):
    sampler = samplers.TrainSampler(20, seed=3)
    sampler.set_epoch(4)
    torch.save(sampler.state_dict(), tmp_path / "state.pth")
    restored = samplers.TrainSampler(20, seed=0)
    assert restored.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True))
    assert (restored.seed, restored.epoch, list(restored)) == (3, 4, list(sampler))
    # The recorded order is what a resumed epoch follows, even were the generator to change.
    state = sampler.state_dict() | {"order": torch.arange(20).flip(0)}
    assert restored.load_state_dict(state) and list(restored) == list(range(19, -1, -1))
    restored.set_epoch(5)
    assert list(restored) != list(range(19, -1, -1))
    assert not samplers.TrainSampler(21, seed=0).load_state_dict(state)  # another dataset: the saved order is dropped


def test_resumable_batch_sampler_skips_done_batches_and_seeds_by_epoch_and_index():
    batches = [[3, 1], [0, 2], [4]]
    sampler = samplers.ResumableBatchSampler(batches, seed=7)
    full = list(sampler)
    assert [[i for i, _ in batch] for batch in full] == batches and len(sampler) == 3
    sampler.set_position(epoch=0, start=2)
    assert list(sampler) == full[2:] and len(sampler) == 1
    seeds = {i: s for batch in full for i, s in batch}
    assert len(set(seeds.values())) == 5
    sampler.set_position(epoch=1)
    assert all(s != seeds[i] for batch in sampler for i, s in batch)


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return index, torch.rand(3)


def test_seeded_dataset_makes_samples_from_their_seed_and_leaves_the_main_stream_alone():
    dataset = samplers.SeededDataset(_RandomItems())
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    seed, first = dataset[(2, 11)]
    assert torch.rand(1) == expected_next  # the main process's generator did not move
    assert seed == 11 and first[0] == 2
    assert torch.equal(dataset[(2, 11)][1][1], first[1]) and not torch.equal(dataset[(2, 12)][1][1], first[1])


def test_seeded_collate_draws_from_the_batch_seeds():
    def collate(samples):
        return [sample for sample in samples], torch.rand(2)

    seeded = samplers.SeededCollate(collate)
    samples, noise = seeded([(1, "a"), (2, "b")])
    assert samples == ["a", "b"] and torch.equal(seeded([(1, "x"), (2, "y")])[1], noise)
    assert not torch.equal(seeded([(1, "a"), (3, "b")])[1], noise)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_gives_the_same_samples_whatever_the_workers(workers):
    def loader(start):
        batch_sampler = samplers.ResumableBatchSampler([[0, 1], [2, 3], [1, 0]], seed=3)
        batch_sampler.set_position(epoch=2, start=start)
        dataset = samplers.SeededDataset(_RandomItems())
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=samplers.SeededCollate()
        )

    full = list(loader(0))
    resumed = list(loader(1))
    # utils.collate_fn batches (index, noise) samples into (indices, noises)
    assert all(
        torch.equal(x, y) for a, b in zip(full[1:], resumed, strict=True) for x, y in zip(a[1], b[1], strict=True)
    )

"""InferenceSampler, collate_fn, SmoothedValue / MetricLogger, the metrics log (metrics.jsonl, TensorBoard), save_on_master, load_file."""

import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

import utils


@pytest.mark.parametrize("size", [0, 1, 5, 9, 10, 17])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_inference_sampler_shards_cover_each_index_once(size, world_size):
    shards = [list(utils.InferenceSampler(size, rank=rank, world_size=world_size)) for rank in range(world_size)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(size))  # every index exactly once: no padding, no repeats
    for rank, shard in enumerate(shards):
        assert shard == sorted(shard)
        assert len(utils.InferenceSampler(size, rank=rank, world_size=world_size)) == len(shard)
        assert all(i % world_size == rank for i in shard)
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_inference_sampler_defaults_to_a_single_process():
    assert list(utils.InferenceSampler(4)) == [0, 1, 2, 3]


def test_collate_fn_keeps_images_and_targets_as_tuples():
    images = [torch.zeros(3, 4, 5), torch.ones(3, 6, 2)]
    targets = [{"image_id": 1}, {"image_id": 2}]
    batched_images, batched_targets = utils.collate_fn(list(zip(images, targets)))
    assert isinstance(batched_images, tuple) and isinstance(batched_targets, tuple)
    assert batched_images[0] is images[0] and batched_images[1] is images[1]
    assert batched_targets == (targets[0], targets[1])


def test_collate_fn_in_a_dataloader():
    data = [(torch.full((1, i + 1, 2), float(i)), {"n": i}) for i in range(5)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=utils.collate_fn)
    batches = list(loader)
    assert len(batches) == 3
    assert [t["n"] for t in batches[2][1]] == [4]
    assert [img.shape[1] for img in batches[0][0]] == [1, 2]


def test_smoothed_value_statistics():
    meter = utils.SmoothedValue(window_size=3)
    assert (meter.median, meter.avg, meter.global_avg, meter.max, meter.value) == (0.0, 0.0, 0.0, 0.0, 0.0)
    for v in [10.0, 1.0, 4.0, 7.0]:
        meter.update(v)
    # the window holds the last three values: 1, 4, 7
    assert meter.median == 4.0
    assert meter.avg == pytest.approx(4.0)
    assert meter.max == 7.0
    assert meter.value == 7.0
    assert meter.global_avg == pytest.approx(22.0 / 4)
    assert meter.count == 4


def test_smoothed_value_weighted_updates():
    meter = utils.SmoothedValue(window_size=10)
    meter.update(2.0, n=3)
    meter.update(6.0, n=1)
    assert meter.global_avg == pytest.approx((2.0 * 3 + 6.0) / 4)
    assert meter.avg == pytest.approx(4.0)  # the window averages values, not weights


def test_smoothed_value_median_of_an_even_window_is_a_middle_value():
    meter = utils.SmoothedValue(window_size=4)
    for v in [3.0, 1.0, 9.0, 5.0]:
        meter.update(v)
    assert meter.median in (3.0, 5.0)
    assert statistics.median_low([3.0, 1.0, 9.0, 5.0]) == meter.median  # torch's median is the lower middle value


def test_smoothed_value_str():
    meter = utils.SmoothedValue(window_size=5, fmt="{value:.1f} {max:.1f} {avg:.2f}")
    meter.update(1.0)
    meter.update(2.0)
    assert str(meter) == "2.0 2.0 1.50"
    assert str(utils.SmoothedValue()) == "0.0000 (0.0000)"


def test_smoothed_value_synchronize_is_a_no_op_without_distributed():
    meter = utils.SmoothedValue()
    meter.update(3.0, n=2)
    meter.synchronize_between_processes()
    assert (meter.count, meter.total) == (2, 6.0)


def test_metric_logger(capsys):
    logger = utils.MetricLogger(delimiter=" | ")
    logger.update(loss=torch.tensor(2.0), lr=0.1)
    logger.update(loss=4.0)
    assert logger.loss.global_avg == pytest.approx(3.0)
    assert logger.lr.value == pytest.approx(0.1)
    with pytest.raises(AttributeError, match="nope"):
        logger.nope  # noqa: B018
    logger.add_meter("custom", utils.SmoothedValue(fmt="{value:.0f}"))
    logger.update(custom=7)
    text = str(logger)
    assert text.startswith("loss: ")
    assert " | custom: 7" in text
    items = list(logger.log_every(list("abcde"), print_freq=2, header="Test:"))
    assert items == list("abcde")
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" | ")[1] for line in lines[:-1]] == ["[0/5]", "[2/5]", "[4/5]"]
    assert lines[-1].startswith("Test: Total time:")


def test_log_every_hands_each_printed_lines_numbers_to_on_print(capsys):
    logger = utils.MetricLogger()
    seen = []
    for i, _ in enumerate(logger.log_every(range(5), print_freq=2, start=0, on_print=lambda i, numbers: seen.append((i, numbers)))):
        logger.update(loss=float(i), lr=0.5 / (i + 1))
    assert [i for i, _ in seen] == [0, 2, 4]  # the iterations of the printed lines
    for i, numbers in seen:
        assert numbers["loss"] == float(i) and numbers["lr"] == 0.5 / (i + 1)  # this iteration's values, not smoothed
        assert numbers["iter_time"] >= numbers["data_time"] >= 0
        assert ("max_mem_mb" in numbers) == torch.cuda.is_available()
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # the console lines are unchanged


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_writer_round_trips_records_and_writes_null_for_non_finite_numbers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = utils.JsonlWriter(path)
    assert not path.exists()  # opened at the first record
    records = [{"type": "train", "epoch": 0, "lr": 0.02, "losses": {"loss_a": 1.5}}, {"type": "eval", "bbox": {"AP": 0.25}}]
    for record in records:
        writer.write(record)
    writer.write({"type": "train", "grad_norm": float("inf"), "losses": {"loss_a": float("nan")}})
    writer.close()
    assert _lines(path) == [*records, {"type": "train", "grad_norm": None, "losses": {"loss_a": None}}]
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()  # strict JSON


def test_jsonl_writer_flushes_every_record_and_appends_to_an_earlier_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iteration": 0}\n')
    writer = utils.JsonlWriter(path)
    writer.write({"type": "train", "iteration": 1})
    # Readable from another handle while the writer is still open: a kill -9 now would lose nothing.
    assert [r["iteration"] for r in _lines(path)] == [0, 1]
    writer.write({"type": "train", "iteration": 2})
    assert [r["iteration"] for r in _lines(path)] == [0, 1, 2]
    writer.close()


def test_jsonl_writer_starts_a_new_line_after_one_cut_off_by_a_killed_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iteration": 0}\n{"type": "tra')
    with contextlib.closing(utils.JsonlWriter(path)) as writer:
        writer.write({"type": "train", "iteration": 1})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"type": "tra' and json.loads(lines[2]) == {"type": "train", "iteration": 1}


def test_metrics_writer_writes_only_on_rank_0_and_only_with_an_output_dir(tmp_path, monkeypatch):
    with utils.MetricsWriter(tmp_path) as metrics:
        metrics.write({"type": "train", "global_iteration": 0, "lr": 0.1})
    assert _lines(tmp_path / "metrics.jsonl") == [{"type": "train", "global_iteration": 0, "lr": 0.1}]
    with utils.MetricsWriter(None) as metrics:
        metrics.write({"type": "train", "global_iteration": 1})
    monkeypatch.setattr(utils, "get_rank", lambda: 1)
    with utils.MetricsWriter(tmp_path / "rank1", tensorboard=True) as metrics:
        metrics.write({"type": "train", "global_iteration": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_tensorboard_is_unavailable_without_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package looks like to import
    assert not utils.tensorboard_available()


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_numbers_of_each_record_at_its_global_iteration(tmp_path):
    pytest.importorskip("tensorboard")
    train = {"type": "train", "epoch": 0, "iteration": 4, "global_iteration": 4, "lr": 0.25, "loss": 1.5, "losses": {"loss_a": 1.5}}
    evaluation = {"type": "eval", "epoch": 0, "global_iteration": 8, "bbox": {"AP": 0.5, "AP50": 0.75}, "timestamp": 1.0}
    with utils.MetricsWriter(tmp_path, tensorboard=True) as metrics:
        assert utils.tensorboard_available()
        metrics.write(train)
        metrics.write(evaluation)
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars == {
        "train/lr": [(4, 0.25)],
        "train/loss": [(4, 1.5)],
        "train/losses/loss_a": [(4, 1.5)],
        "eval/bbox/AP": [(8, 0.5)],
        "eval/bbox/AP50": [(8, 0.75)],
    }
    assert _lines(tmp_path / "metrics.jsonl") == [train, evaluation]


def test_tensorboard_hides_what_a_killed_run_logged_after_the_resumed_runs_first_step(tmp_path):
    pytest.importorskip("tensorboard")
    with utils.MetricsWriter(tmp_path, tensorboard=True) as killed:
        for step in range(6):
            killed.write({"type": "train", "global_iteration": step, "lr": float(step)})
    with utils.MetricsWriter(tmp_path, tensorboard=True, first_step=3) as resumed:
        for step in range(3, 5):
            resumed.write({"type": "train", "global_iteration": step, "lr": 10.0 + step})
    assert _tensorboard_scalars(tmp_path / "tensorboard")["train/lr"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_save_on_master_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pth"
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "args": {"lr": 0.02}}
    utils.save_on_master(obj, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left behind
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"])
    # overwriting an existing file works the same way
    utils.save_on_master({"epoch": 4}, str(path))
    assert torch.load(path, weights_only=True) == {"epoch": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_save_on_master_leaves_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "checkpoint.pth"
    utils.save_on_master({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        utils.save_on_master({"epoch": 2, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_save_on_master_only_saves_on_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "get_rank", lambda: 1)
    path = tmp_path / "checkpoint.pth"
    utils.save_on_master({"epoch": 1}, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_load_file_roundtrip(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(utils.load_file(path, "checkpoint", "--resume")["w"], torch.ones(2))


def test_load_file_missing(tmp_path):
    path = tmp_path / "missing.pth"
    with pytest.raises(utils.UsageError) as info:
        utils.load_file(path, "checkpoint", "--resume")
    assert str(path) in str(info.value)
    assert "--resume" in str(info.value)


def test_load_file_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(utils.UsageError) as info:
        utils.load_file(path, "checkpoint", "--resume")
    message = str(info.value)
    assert str(path) in message
    assert "--resume" in message
    assert "\n" not in message
    assert info.value.__cause__ is None


def test_load_file_directory(tmp_path):
    with pytest.raises(utils.UsageError, match="does not exist"):
        utils.load_file(tmp_path, "checkpoint", "--resume")


_RANK_SCRIPT = """
import argparse, sys
sys.path.insert(0, {root!r})
import torch, utils
args = argparse.Namespace(device="cpu", dist_url="env://")
utils.init_distributed_mode(args)
losses = utils.reduce_dict({{"loss": torch.tensor(float(args.rank + 1))}})
gathered = utils.all_gather({{"rank": args.rank}})
stop = (utils.any_rank(args.rank == 1), utils.any_rank(False))
print("rank", args.rank, "of", args.world_size, args.dist_backend, losses["loss"].item(), gathered, "stop", stop, flush=True)
utils.cleanup_distributed()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_ranks(script_text: str, tmp_path: Path, launcher: str = "torchrun") -> list:
    """Two processes running `script_text`, with the environment torchrun or SLURM would give them."""
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(script_text.format(root=str(Path(utils.__file__).parent)))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_"))}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        if launcher == "torchrun":
            env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
        else:
            env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_init_distributed_mode_from_torchrun_or_slurm_environment(tmp_path, launcher):
    """Two real processes join a gloo group from the environment; collectives give every rank the same answer."""
    procs = _start_two_ranks(_RANK_SCRIPT, tmp_path, launcher)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    # Only rank 0 prints; it saw the average loss of both ranks and both ranks' objects.
    assert "rank 0 of 2 gloo 1.5 [{'rank': 0}, {'rank': 1}] stop (True, False)" in outputs[0][0]
    assert "rank 1 of" not in outputs[1][0]


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_load_file_refuses_pickled_objects_and_runs_nothing(tmp_path):
    import argparse

    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.02), "payload": _Payload(marker)}, path)
    with pytest.raises(utils.UsageError) as info:
        utils.load_file(path, "model checkpoint", "--resume")
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"--resume: {path} holds pickled Python objects") and "\n" not in message


# ----------------------------------------------------------------------------- resumable training order


@pytest.mark.parametrize(("size", "world_size"), [(10, 1), (10, 3), (7, 4), (2, 3)])
def test_train_sampler_shards_one_padded_shuffle_per_epoch(size, world_size):
    shards = [list(utils.TrainSampler(size, seed=5, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1 and len(shards[0]) == -(-size // world_size)
    dealt = [shards[i % world_size][i // world_size] for i in range(len(shards[0]) * world_size)]
    order = utils.TrainSampler(size, seed=5).epoch_order().tolist()
    assert sorted(order) == list(range(size))
    assert dealt == (order * world_size)[: len(dealt)]  # the epoch's order, padded with its own start


def test_train_sampler_order_depends_on_seed_and_epoch_only():
    a, b = utils.TrainSampler(50, seed=1), utils.TrainSampler(50, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != list(utils.TrainSampler(50, seed=1))
    assert list(utils.TrainSampler(50, seed=2)) != list(utils.TrainSampler(50, seed=1))


def test_train_sampler_state_round_trips_through_a_checkpoint_file(tmp_path):
    sampler = utils.TrainSampler(20, seed=3)
    sampler.set_epoch(4)
    torch.save(sampler.state_dict(), tmp_path / "state.pth")
    restored = utils.TrainSampler(20, seed=0)
    assert restored.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=True))
    assert (restored.seed, restored.epoch, list(restored)) == (3, 4, list(sampler))
    # The recorded order is what a resumed epoch follows, even were the generator to change.
    state = sampler.state_dict() | {"order": torch.arange(20).flip(0)}
    assert restored.load_state_dict(state) and list(restored) == list(range(19, -1, -1))
    restored.set_epoch(5)
    assert list(restored) != list(range(19, -1, -1))
    assert not utils.TrainSampler(21, seed=0).load_state_dict(state)  # another dataset: the saved order is dropped


def test_resumable_batch_sampler_skips_done_batches_and_seeds_by_epoch_and_index():
    batches = [[3, 1], [0, 2], [4]]
    sampler = utils.ResumableBatchSampler(batches, seed=7)
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
    dataset = utils.SeededDataset(_RandomItems())
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

    seeded = utils.SeededCollate(collate)
    samples, noise = seeded([(1, "a"), (2, "b")])
    assert samples == ["a", "b"] and torch.equal(seeded([(1, "x"), (2, "y")])[1], noise)
    assert not torch.equal(seeded([(1, "a"), (3, "b")])[1], noise)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_gives_the_same_samples_whatever_the_workers(workers):
    def loader(start):
        batch_sampler = utils.ResumableBatchSampler([[0, 1], [2, 3], [1, 0]], seed=3)
        batch_sampler.set_position(epoch=2, start=start)
        dataset = utils.SeededDataset(_RandomItems())
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=utils.SeededCollate())

    full = list(loader(0))
    resumed = list(loader(1))
    # utils.collate_fn batches (index, noise) samples into (indices, noises)
    assert all(torch.equal(x, y) for a, b in zip(full[1:], resumed, strict=True) for x, y in zip(a[1], b[1], strict=True))


def test_rng_state_round_trips_every_generator_through_a_checkpoint_file(tmp_path):
    import random

    import numpy as np

    torch.save({"rng": utils.rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    utils.set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ----------------------------------------------------------------------------- stop signals and checkpoints


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_are_remembered_and_the_old_handlers_restored(signum):
    before = signal.getsignal(signum)
    with utils.catching_stop_signals() as stop:
        assert not stop.received
        os.kill(os.getpid(), signum)
        assert stop.received and stop.signum == signum
    assert signal.getsignal(signum) is before


def test_save_checkpoint_writes_the_epoch_file_and_links_the_latest(tmp_path):
    for epoch in range(4):
        latest = utils.save_checkpoint({"epoch": epoch}, tmp_path, epoch=epoch, keep=2)
    assert latest == tmp_path / "checkpoint.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "model_2.pth", "model_3.pth"]
    assert torch.load(latest, weights_only=True) == {"epoch": 3}
    utils.save_checkpoint({"epoch": 4, "iteration": 5}, tmp_path)  # mid-epoch: checkpoint.pth alone
    assert torch.load(latest, weights_only=True)["iteration"] == 5
    assert torch.load(tmp_path / "model_3.pth", weights_only=True) == {"epoch": 3}
    utils.save_checkpoint({"epoch": 4}, tmp_path, epoch=4)  # keep=None: every epoch file stays
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_2.pth", "model_3.pth", "model_4.pth"]


def test_a_stale_temporary_link_from_a_killed_save_does_not_change_the_epoch_file(tmp_path):
    utils.save_checkpoint({"step": 3}, tmp_path, epoch=3)
    os.link(tmp_path / "model_3.pth", tmp_path / ".checkpoint.pth.tmp")  # killed between linking and renaming
    utils.save_checkpoint({"step": 4}, tmp_path)  # the next, mid-epoch, save
    assert torch.load(tmp_path / "model_3.pth", weights_only=True) == {"step": 3}
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True) == {"step": 4}


def _save_forever(folder: str, saved_once) -> None:
    """The child of the kill -9 test: save ever-growing checkpoints, each internally consistent."""
    # A forked child must not enter the OpenMP pool its parent started (it would wait forever): one thread.
    torch.set_num_threads(1)
    for step in range(1, 10**9):
        weights = torch.full((step % 7 + 1, 50_000), float(step))
        utils.save_checkpoint({"model": {"w": weights}, "step": step}, folder, epoch=step if step % 3 == 0 else None, keep=2)
        saved_once.set()


def test_kill_9_at_any_moment_of_a_save_loop_leaves_a_loadable_checkpoint(tmp_path):
    import multiprocessing
    import random

    rng = random.Random(0)
    context = multiprocessing.get_context("fork")
    trials = 25
    for trial in range(trials):
        saved_once = context.Event()
        child = context.Process(target=_save_forever, args=(str(tmp_path), saved_once))
        child.start()
        # Most trials kill at a random moment once the loop is under way (however loaded the machine);
        # every fifth one right after the start, possibly before any save completes.
        if trial % 5:
            assert saved_once.wait(timeout=120), "the saver never completed a checkpoint"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        latest = tmp_path / "checkpoint.pth"
        if not latest.exists():
            continue  # killed before the first checkpoint completed
        checkpoint = utils.load_file(latest, "checkpoint", "--resume")
        step = checkpoint["step"]
        assert torch.equal(checkpoint["model"]["w"], torch.full((step % 7 + 1, 50_000), float(step))), trial
        for epoch_file in tmp_path.glob("model_*.pth"):
            assert utils.load_file(epoch_file, "checkpoint", "--resume")["step"] == int(epoch_file.stem.split("_")[1])
    assert (tmp_path / "checkpoint.pth").exists()


_DYING_RANK_SCRIPT = """
import argparse, os, sys, time
sys.path.insert(0, {root!r})
import torch, utils
args = argparse.Namespace(device="cpu", dist_url="env://", dist_timeout=5)
utils.init_distributed_mode(args)
if args.rank == 1:
    os._exit(9)  # dies without a word, as a killed or crashed process does
start = time.time()
try:
    utils.any_rank(False)
except RuntimeError as e:
    assert utils.is_collective_failure(e), e
    print("rank 0 gave up after", round(time.time() - start), "s:", type(e).__name__, flush=True)
    utils.cleanup_distributed()  # as train.py does: exiting with gloo's threads alive can abort ("terminate called ...")
    sys.exit(1)
"""


@pytest.mark.slow
def test_a_dead_rank_does_not_leave_the_others_waiting(tmp_path):
    procs = _start_two_ranks(_DYING_RANK_SCRIPT, tmp_path)
    out, err = procs[0].communicate(timeout=120)
    procs[1].communicate(timeout=60)
    assert procs[0].returncode == 1, out + err
    assert "rank 0 gave up after" in out
    assert not utils.is_collective_failure(RuntimeError("Connection reset"))  # not distributed here: a bug, not a dead peer

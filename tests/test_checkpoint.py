"""checkpoint.py: the format's round trip, atomic saves that survive kill -9, weights_only loading that refuses
pickled code, and every random generator restored."""

import errno
import json
import os
import re
import shutil
import signal
import time

import pytest
import torch

import checkpoint as ckpt
import distributed
import errors
from conftest import write_reference_checkpoint
from labels import Classes


def test_save_on_master_is_atomic(tmp_path):
    path = tmp_path / "checkpoint.pth"
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "args": {"lr": 0.02}}
    ckpt.save_on_master(obj, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left behind
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], obj["model"]["w"])
    # overwriting an existing file works the same way
    ckpt.save_on_master({"epoch": 4}, str(path))
    assert torch.load(path, weights_only=True) == {"epoch": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_save_on_master_leaves_the_old_file_when_saving_fails(tmp_path):
    path = tmp_path / "checkpoint.pth"
    ckpt.save_on_master({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        ckpt.save_on_master({"epoch": 2, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}


def test_save_on_master_only_saves_on_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "get_rank", lambda: 1)
    path = tmp_path / "checkpoint.pth"
    ckpt.save_on_master({"epoch": 1}, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_load_file_roundtrip(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(ckpt.load_file(path, "checkpoint", "--resume")["w"], torch.ones(2))


def test_load_file_missing(tmp_path):
    path = tmp_path / "missing.pth"
    with pytest.raises(errors.UsageError) as info:
        ckpt.load_file(path, "checkpoint", "--resume")
    assert str(path) in str(info.value)
    assert "--resume" in str(info.value)


def test_load_file_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(errors.UsageError) as info:
        ckpt.load_file(path, "checkpoint", "--resume")
    message = str(info.value)
    assert str(path) in message
    assert "--resume" in message
    assert "\n" not in message
    assert info.value.__cause__ is None


def test_load_file_directory(tmp_path):
    with pytest.raises(errors.UsageError, match=f"--resume: {tmp_path} is a folder; pass a checkpoint file in it"):
        ckpt.load_file(tmp_path, "checkpoint", "--resume")


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
    with pytest.raises(errors.UsageError) as info:
        ckpt.load_file(path, "model checkpoint", "--resume")
    assert not marker.exists()
    message = str(info.value)
    assert message.startswith(f"--resume: {path} holds pickled Python objects") and "\n" not in message


def test_rng_state_round_trips_every_generator_through_a_checkpoint_file(tmp_path):
    import random

    import numpy as np

    torch.save({"rng": ckpt.rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_save_checkpoint_writes_the_epoch_file_and_links_the_latest(tmp_path):
    for epoch in range(4):
        latest = ckpt.save_checkpoint({"epoch": epoch}, tmp_path, epoch=epoch, keep=2)
    assert latest == tmp_path / "checkpoint.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "model_2.pth", "model_3.pth"]
    assert torch.load(latest, weights_only=True) == {"epoch": 3}
    ckpt.save_checkpoint({"epoch": 4, "iteration": 5}, tmp_path)  # mid-epoch: checkpoint.pth alone
    assert torch.load(latest, weights_only=True)["iteration"] == 5
    assert torch.load(tmp_path / "model_3.pth", weights_only=True) == {"epoch": 3}
    ckpt.save_checkpoint({"epoch": 4}, tmp_path, epoch=4)  # keep=None: every epoch file stays
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_2.pth", "model_3.pth", "model_4.pth"]


def test_a_stale_temporary_link_from_a_killed_save_does_not_change_the_epoch_file(tmp_path):
    ckpt.save_checkpoint({"step": 3}, tmp_path, epoch=3)
    os.link(tmp_path / "model_3.pth", tmp_path / ".checkpoint.pth.tmp")  # killed between linking and renaming
    ckpt.save_checkpoint({"step": 4}, tmp_path)  # the next, mid-epoch, save
    assert torch.load(tmp_path / "model_3.pth", weights_only=True) == {"step": 3}
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True) == {"step": 4}


def _save_forever(folder: str, saved_once) -> None:
    """The child of the kill -9 test: save ever-growing checkpoints, each internally consistent (at most 56 kB: a
    kill lands in every phase of a save, the write, the fsync, the rename and the links, without writing gigabytes)."""
    # A forked child must not enter the OpenMP pool its parent started (it would wait forever): one thread.
    torch.set_num_threads(1)
    for step in range(1, 10**9):
        weights = torch.full((step % 7 + 1, 2_000), float(step))
        ckpt.save_checkpoint(
            {"model": {"w": weights}, "step": step}, folder, epoch=step if step % 3 == 0 else None, keep=2
        )
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
        checkpoint = ckpt.load_file(latest, "checkpoint", "--resume")
        step = checkpoint["step"]
        assert torch.equal(checkpoint["model"]["w"], torch.full((step % 7 + 1, 2_000), float(step))), trial
        for epoch_file in tmp_path.glob("model_*.pth"):
            assert ckpt.load_file(epoch_file, "checkpoint", "--resume")["step"] == int(epoch_file.stem.split("_")[1])
    assert (tmp_path / "checkpoint.pth").exists()


# ----------------------------------------------------------------------------- the format


def _full_checkpoint() -> ckpt.Checkpoint:
    classes = Classes(
        label_to_category_id=[0, 2, 5],
        categories=[{"id": 2, "name": "disc"}, {"id": 5, "name": "square"}],
        keypoint_names=["a", "b"],
        keypoint_skeleton=[[1, 2]],
    )
    state = ckpt.TrainState(seed=7, epoch=3, order=torch.tensor([2, 0, 1]), iteration=5, rng=[ckpt.rng_state()])
    return ckpt.Checkpoint(
        model={"w": torch.arange(4.0)}, epoch=3, args={"lr": 0.02, "model_kwargs": [("min_size", 64)]},
        classes=classes, optimizer={"state": {}, "param_groups": []}, lr_scheduler={"last_epoch": 3},
        scaler={"scale": 1024.0}, train_state=state,
    )  # fmt: skip


def test_a_checkpoint_round_trips_through_a_weights_only_file(tmp_path):
    saved = _full_checkpoint()
    ckpt.save_on_master(saved.to_dict(), tmp_path / "c.pth")
    loaded = ckpt.read_model_file(tmp_path / "c.pth", "--resume", training_checkpoint=True)
    assert loaded.version == ckpt.FORMAT_VERSION
    assert torch.equal(loaded.model["w"], saved.model["w"]) and torch.equal(
        loaded.train_state.order, torch.tensor([2, 0, 1])
    )
    assert loaded.classes == saved.classes
    assert (loaded.epoch, loaded.args, loaded.optimizer, loaded.lr_scheduler, loaded.scaler) == (
        3, {"lr": 0.02, "model_kwargs": [("min_size", 64)]}, saved.optimizer, {"last_epoch": 3}, {"scale": 1024.0},
    )  # fmt: skip
    assert (loaded.train_state.seed, loaded.train_state.epoch, loaded.train_state.iteration) == (7, 3, 5)
    assert loaded.can_resume_training and not loaded.epoch_finished
    assert loaded.train_state.sampler_state().keys() == {"seed", "epoch", "order"}


def test_the_documented_keys_are_the_keys_written():
    """The table in checkpoint.py's docstring names every key a full checkpoint holds, and no other."""
    written = set(_full_checkpoint().to_dict())
    documented = set(re.findall(r"^\| `([a-z_]+)`", ckpt.__doc__, re.MULTILINE))
    documented |= {key for row in re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)+) \|", ckpt.__doc__, re.MULTILINE)
                   for key in re.findall(r"`([a-z_]+)`", row)}  # fmt: skip
    assert written == documented
    names = set(re.search(r"TrainState\): (.*) \|", ckpt.__doc__).group(1).replace("`", "").split(", "))
    assert (
        set(vars(_full_checkpoint().train_state))
        == names
        == {"seed", "epoch", "order", "iteration", "rng", "evaluated"}
    )


def test_files_of_earlier_versions_and_plain_state_dicts_read_as_checkpoints(tmp_path):
    """A checkpoint written before the format had a version is version 1; a plain state dict is just a model."""
    older = _full_checkpoint().to_dict()
    del older["version"]
    assert ckpt.Checkpoint.from_dict(older).version == 1
    plain = ckpt.Checkpoint.from_dict({"backbone.w": torch.zeros(1)})
    assert (plain.version, list(plain.model), plain.classes, plain.epoch) == (0, ["backbone.w"], None, None)
    assert not plain.can_resume_training
    torch.save({"backbone.w": torch.zeros(1)}, tmp_path / "state.pth")
    with pytest.raises(errors.UsageError, match="has no model, optimizer, lr_scheduler, epoch; it is not a training"):
        ckpt.read_model_file(tmp_path / "state.pth", "--resume", training_checkpoint=True)


def test_a_checkpoint_of_torchvisions_reference_reads_with_its_flags_as_plain_data(tmp_path):
    """Its pickled argparse.Namespace is allowed under weights_only, and nothing else is."""
    saved = _full_checkpoint().to_dict()
    path = write_reference_checkpoint(tmp_path / "model_25.pth", saved, epochs=26)
    loaded = ckpt.read_model_file(path, "--resume", training_checkpoint=True)
    assert loaded.source == "torchvision reference" and loaded.version == 0
    assert loaded.args["model"] == "maskrcnn_resnet50_fpn" and loaded.args["weights_backbone"].startswith("ResNet50")
    assert type(loaded.args) is dict and loaded.classes is None and loaded.train_state is None
    assert loaded.epoch == 3 and loaded.can_resume_training and loaded.epoch_finished
    assert torch.equal(loaded.model["w"], saved["model"]["w"]) and loaded.optimizer == saved["optimizer"]


def test_an_epoch_whose_evaluation_did_not_finish_is_named_and_older_files_read_as_evaluated(tmp_path):
    data = _full_checkpoint().to_dict()
    data["train_state"] |= {"iteration": None, "evaluated": False}
    path = tmp_path / "checkpoint.pth"
    torch.save(data, path)
    assert ckpt.Checkpoint.from_dict(data).unevaluated_epoch(path) == 3
    # The evaluation's record in metrics.jsonl, written after the checkpoint, marks it done; an older run's record of
    # the same epoch (written before this checkpoint) does not, nor does another epoch's or a cut-off line.
    metrics = tmp_path / "metrics.jsonl"
    saved_at = path.stat().st_mtime
    lines = [{"type": "eval", "epoch": 3, "timestamp": saved_at - 60}, {"type": "eval", "epoch": 2, "timestamp": 1e12}]
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"type": "eval", "epoch": 3, "tim')
    assert ckpt.Checkpoint.from_dict(data).unevaluated_epoch(path) == 3
    with open(metrics, "a") as f:
        f.write("\n" + json.dumps({"type": "eval", "epoch": 3, "timestamp": saved_at + 1}) + "\n")
    assert ckpt.Checkpoint.from_dict(data).unevaluated_epoch(path) is None
    metrics.unlink()
    data["train_state"]["iteration"] = 5  # a mid-epoch checkpoint: nothing to evaluate yet
    assert ckpt.Checkpoint.from_dict(data).unevaluated_epoch(path) is None
    del data["train_state"]["evaluated"]
    data["train_state"]["iteration"] = None  # written before the field existed
    assert ckpt.Checkpoint.from_dict(data).unevaluated_epoch(path) is None


# ----------------------------------------------------------------------------- a full disk


def _free(monkeypatch, free: int) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage._replace(free=free))


def test_a_save_that_would_not_fit_is_one_line_naming_the_folder_and_bytes_and_writes_nothing(tmp_path, monkeypatch):
    first = _full_checkpoint().to_dict()
    ckpt.save_checkpoint(first, tmp_path, epoch=3)
    before = sorted(p.name for p in tmp_path.iterdir())
    _free(monkeypatch, 100)
    with pytest.raises(errors.UsageError) as error:
        ckpt.save_checkpoint(_full_checkpoint().to_dict(), tmp_path, epoch=4)
    message = str(error.value)
    needed = int(ckpt.tensor_bytes(first) * ckpt.SPACE_MARGIN)
    assert "\n" not in message and f"--output-dir: {tmp_path} has 100 bytes" in message and f"{needed} bytes" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    ckpt.save_checkpoint(_full_checkpoint().to_dict(), tmp_path, epoch=3)
    before = (tmp_path / "checkpoint.pth").read_bytes()

    def full(obj, tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_write_torch_file", full)
    with pytest.raises(errors.UsageError, match=f"--output-dir: {tmp_path} ran out of space writing a checkpoint"):
        ckpt.save_checkpoint(_full_checkpoint().to_dict(), tmp_path, epoch=4)
    assert (tmp_path / "checkpoint.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth", "model_3.pth"]  # no temporary file left


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_the_size_estimated_before_the_first_save_is_the_saved_size(tmp_path, opt):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Conv2d(64, 64, 3))
    model[0].requires_grad_(False)  # frozen layers have no optimizer state
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable) if opt == "adamw" else torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    estimate = ckpt.estimated_checkpoint_bytes(model, opt)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pth")
    size = (tmp_path / "c.pth").stat().st_size
    assert size <= estimate <= 1.15 * size


def test_start_up_refuses_a_folder_without_room_for_one_checkpoint_and_warns_for_the_kept_ones(
    tmp_path, monkeypatch, capsys
):
    _free(monkeypatch, 10**6)
    with pytest.raises(errors.UsageError, match="has 1000000 bytes"):
        ckpt.check_room_for_the_run(tmp_path, 2 * 10**6, kept=3)
    ckpt.check_room_for_the_run(tmp_path, 4 * 10**5, kept=3)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "room for 2 checkpoints" in err and "keeps 3" in err


def test_a_temporary_file_left_by_a_cut_off_save_is_removed_and_said(tmp_path, capsys):
    ckpt.save_checkpoint(_full_checkpoint().to_dict(), tmp_path, epoch=3)
    stale = [tmp_path / ".checkpoint.pth.tmp", tmp_path / ".model_4.pth.tmp", tmp_path / ".predictions_4.json.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 2**20)
    (tmp_path / ".notes.tmp").write_text("not ours")
    ckpt.remove_stale_temporary_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "checkpoint.pth", "model_3.pth"]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"Removed {p} (1 MiB), left by a save that an earlier run's end cut off" for p in sorted(stale)]

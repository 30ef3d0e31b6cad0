"""README, "Where to change what": each of its five answers done once, from outside the modules it names.

A checkpoint field (one entry in checkpoint.RunState.extra), an evaluator passed to a training run and to --test-only
(train.main(evaluators=)), a dataset format registered by name and read by train.py and predict.py --ground-truth
(annotations.READERS), an lr schedule (solver.EPOCH_SCHEDULERS; an unknown name is one line), and the flags
a resumed run takes from its checkpoint, into a new Namespace (the parsed flags never change).
"""

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

import annotations
import checkpoint as ckpt
import errors
import flags
import predict
import solver
import train
from conftest import CsvReader, run_train, write_csv_split
from labels import Classes
from samplers import TrainSampler

# ----------------------------------------------------------------------------- a checkpoint field


class _Counter:
    """A stateful part a run may add (an EMA of the weights, say): anything with state_dict / load_state_dict."""

    def __init__(self, value: int = 0):
        self.value = value

    def state_dict(self) -> dict:
        return {"value": torch.tensor(self.value)}

    def load_state_dict(self, state: dict) -> None:
        self.value = int(state["value"])


def _run_state(extra: dict) -> ckpt.RunState:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = argparse.Namespace(lr_scheduler="multisteplr", lr_steps=[2], lr_gamma=0.1, epochs=3)
    classes = Classes([0, 1], [{"id": 1, "name": "one"}])
    state = ckpt.RunState({"model": "linear"}, classes, model, optimizer, solver.build_lr_scheduler(optimizer, args, 4),
                          TrainSampler(10, seed=3), extra=extra)  # fmt: skip
    state.train_sampler.set_epoch(1)
    return state


def test_a_checkpoint_field_is_one_entry_of_run_state_extra(tmp_path):
    saved = _run_state({"counter": _Counter(41)})
    path = ckpt.save_run(saved, tmp_path, epoch=1)
    assert torch.load(path, weights_only=True)["counter"] == {"value": torch.tensor(41)}  # saved under its key
    checkpoint = ckpt.read_model_file(path, "--resume", training_checkpoint=True)
    assert set(checkpoint.extra) == {"counter"}
    resumed = _run_state({"counter": _Counter()})
    assert resumed.restore(checkpoint, str(path)) == (2, 0)
    assert resumed.extra["counter"].value == 41
    assert resumed.optimizer.state_dict() == saved.optimizer.state_dict()
    # A run that expects the part refuses a checkpoint without it, in one line.
    (tmp_path / "plain").mkdir()
    plain = ckpt.read_model_file(ckpt.save_run(_run_state({}), tmp_path / "plain", epoch=1), "--resume")
    with pytest.raises(errors.UsageError, match="holds no 'counter'"):
        _run_state({"counter": _Counter()}).restore(plain, "plain.pth")


# ----------------------------------------------------------------------------- an lr schedule


def test_scheduler_names_come_from_solver_and_an_unknown_one_is_one_line(capsys):
    parser = flags.get_args_parser()
    assert next(a for a in parser._actions if a.dest == "lr_scheduler").choices == list(solver.EPOCH_SCHEDULERS)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(
        errors.UsageError, match="--lr-scheduler: unknown scheduler 'steplr'; choose one of multisteplr"
    ):
        solver.build_lr_scheduler(optimizer, argparse.Namespace(lr_scheduler="steplr"), 4)
    code, out, err = run_train(["--lr-scheduler", "steplr"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--lr-scheduler" in err and "Traceback" not in err


def test_a_new_schedule_is_one_entry(monkeypatch):
    monkeypatch.setitem(solver.EPOCH_SCHEDULERS, "constant", lambda opt, args: torch.optim.lr_scheduler.ConstantLR(opt))
    args = flags.get_args_parser().parse_args(["--lr-scheduler", "constant"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = solver.build_lr_scheduler(optimizer, args, 4)
    assert isinstance(scheduler.epoch_scheduler, torch.optim.lr_scheduler.ConstantLR)


# ----------------------------------------------------------------------------- flags


def test_a_resumed_runs_flags_are_a_new_namespace_and_the_parsed_ones_stay():
    parser = flags.get_args_parser()
    args = parser.parse_args(["--epochs", "3"])
    recorded = {"min_size": 64, "epochs": 9, "device": "cuda:3", "rank": 2, "lr": 0.5}
    restored, taken = flags.restore_recorded(args, recorded, {"epochs"}, "c.pth")
    assert (args.min_size, args.epochs, args.lr) == (None, 3, 0.02)  # unchanged
    assert (restored.min_size, restored.epochs, restored.lr, restored.device) == (64, 3, 0.5, args.device)
    assert sorted(taken) == ["lr", "min_size"] and not hasattr(restored, "rank")
    policies = flags.resume_policies(parser)
    assert policies["epochs"] == flags.FREE and policies["min_size"] == flags.RESTORED
    assert policies["device"] == flags.NEVER and policies["batch_size"] == flags.TRAINING


# ----------------------------------------------------------------------------- a dataset format and an evaluator


class _CountingEvaluator:
    """An evaluator of another kind: it counts the images and detections it was given, and names no "AP"."""

    accepts_unpasted_masks = False
    passes: list["_CountingEvaluator"] = []

    def __init__(self, model: torch.nn.Module, data_loader):
        self.images, self.detections_seen, self.metrics = [], 0, {}
        self.passes.append(self)

    def update(self, predictions: dict) -> None:
        self.images += list(predictions)
        self.detections_seen += sum(len(output["scores"]) for output in predictions.values())

    def synchronize_between_processes(self) -> None:
        pass

    def summarize(self) -> dict:
        self.metrics = {"counts": {"images": len(self.images), "detections": self.detections_seen}}
        print(f"Counted {len(self.images)} images")
        return self.metrics

    def detections(self) -> list[dict]:
        return [{"image_id": image_id} for image_id in self.images]


def _main(argv: list, evaluators=None) -> tuple[int, str]:
    parser, argv = train.get_args_parser(), [str(a) for a in argv]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train.main(parser.parse_args(argv), flags.typed_flags(parser, argv), evaluators=evaluators)
    return code, out.getvalue()


@pytest.fixture
def csv_format(monkeypatch):
    monkeypatch.setitem(annotations.READERS, "csv", CsvReader())  # what registering a format takes


@pytest.mark.slow
def test_another_format_and_evaluator_train_evaluate_and_draw(synthetic_root, csv_format, tmp_path):
    train_csv, val_csv = write_csv_split(synthetic_root, "train", 4), write_csv_split(synthetic_root, "val", 3)
    data = ["--annotation-format", "csv", "--train-images", synthetic_root / "train2017", "--train-annotations",
            train_csv, "--val-images", synthetic_root / "val2017", "--val-annotations", val_csv]  # fmt: skip
    run = ["--model", "fasterrcnn_tiny_fpn", "--weights-backbone", "none", "--device", "cpu", "-j", "0",
           "--min-size", "64", "--max-size", "96", "-b", "2", "--lr", "0.001", "--trainable-backbone-layers", "0",
           "--save-predictions", "--print-freq", "1", "--model-kwargs", "rpn_pre_nms_top_n_test=20",
           "rpn_post_nms_top_n_test=20", "box_detections_per_img=5", "box_score_thresh=0.0"]  # fmt: skip
    _CountingEvaluator.passes.clear()
    code, out = _main([*data, *run, "--epochs", "1", "--output-dir", tmp_path / "run"], _CountingEvaluator)
    assert code == 0, out[-3000:]
    (evaluation,) = _CountingEvaluator.passes
    assert sorted(evaluation.images) == [1, 2, 3] and "Counted 3 images" in out  # the CSV's image ids
    assert "Epoch: [0]  [1/2]" in out and "IoU metric" not in out  # 4 images in batches of 2; no COCO scoring
    assert "Done after epoch 0: counts images 3.000 (best 3.000, epoch 0)" in out  # its own first number
    record = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["type"] == "eval" and record["counts"]["images"] == 3
    assert json.loads((tmp_path / "run" / "predictions_0.json").read_text()) == evaluation.detections()
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert checkpoint["args"]["annotation_format"] == "csv" and [c["name"] for c in checkpoint["categories"]] == sorted(
        c["name"] for c in checkpoint["categories"]
    )

    # --test-only with the same evaluator, the format taken from the checkpoint
    val_only = data[6:]  # --annotation-format csv comes from the checkpoint
    code, out = _main([*val_only, "--test-only", "--resume", tmp_path / "run" / "checkpoint.pth", "--device", "cpu",
                       "-j", "0", "--output-dir", tmp_path / "test"], _CountingEvaluator)  # fmt: skip
    assert code == 0 and "Counted 3 images" in out and len(_CountingEvaluator.passes) == 2

    # predict.py --ground-truth reads the same format through the same reader
    pictures, rows = tmp_path / "pictures", CsvReader().read(val_csv)
    listed = [str(synthetic_root / "val2017" / name) for name in rows.file_names]
    with contextlib.redirect_stdout(io.StringIO()) as said:
        code = predict.cli(["--ground-truth", str(val_csv), "--annotation-format", "csv", "--output-dir", str(pictures),
                            *listed])  # fmt: skip
    assert code == 0, said.getvalue()
    drawn = sorted(p.name for p in pictures.glob("*.png"))
    assert drawn == sorted(Path(name).stem + ".png" for name in rows.file_names)
    boxes = [len([1 for r in rows.image_of_ann if r == row]) for row in range(len(rows.file_names))]
    assert all(f"{count} annotations" in said.getvalue() for count in boxes)

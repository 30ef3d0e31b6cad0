"""train.py: flags, the local ResNet-50 backbone, checkpoints, and end-to-end runs (train, --resume,
--test-only, torchrun with 2 processes) on a COCO-format dataset the generator did not write."""

import argparse
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import checkpoint as ckpt
import errors
import metrics_log
import models
import processes
import synthetic_people
import train
from conftest import TINY_MODEL, run_train, script
from labels import Classes

# Small images and a lighter R-CNN sampling keep each run to seconds on 2 CPU cores.
SMALL_RUN = [
    "--device", "cpu", "--min-size", "96", "--max-size", "128", "-j", "0", "--print-freq", "1", "--seed", "0",
    "--model-kwargs", "box_batch_size_per_image=32", "rpn_pre_nms_top_n_train=100", "rpn_post_nms_top_n_train=100",
    "rpn_pre_nms_top_n_test=100", "rpn_post_nms_top_n_test=100",
]  # fmt: skip
AP_LINE = re.compile(
    r"Average (Precision|Recall) +\((AP|AR)\) @\[ IoU=([\d.:]+) +\| area= *(\w+) \| maxDets= *(\d+) \] = (-?[\d.]+)"
)


def _run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return processes.run([sys.executable, "train.py", *args], timeout, env={**os.environ, **(env or {})})


def _ap_table(output: str) -> list[str]:
    """The 12 standard lines per IoU type (faster-coco-eval adds recall at IoU 0.50 and 0.75)."""
    return [m.group(0) for m in AP_LINE.finditer(output) if m.group(2) == "AP" or m.group(3) == "0.50:0.95"]


def _small_run_from_scratch(root: Path, output: Path) -> list[str]:
    """The small Mask R-CNN's flags: for the runs that stop at bad input, or evaluate once."""
    return ["--data-path", str(root), *TINY_MODEL, "--output-dir", str(output), *SMALL_RUN]


def _args(*extra: str):
    return train.get_args_parser().parse_args(list(extra))


# ----------------------------------------------------------------------------- flags


def test_flags_have_the_reference_names_and_defaults():
    args = _args()
    assert (args.model, args.batch_size, args.epochs, args.workers, args.opt) == (
        "maskrcnn_resnet50_fpn",
        2,
        26,
        4,
        "sgd",
    )
    assert (args.lr, args.momentum, args.weight_decay, args.lr_steps, args.lr_gamma) == (0.02, 0.9, 1e-4, [16, 22], 0.1)
    assert (args.aspect_ratio_group_factor, args.dist_url) == (3, "env://")
    assert (args.min_size, args.max_size) == (None, None)  # the model's own defaults (800, 1333 for R-CNNs)
    assert args.device in ("cuda", "cpu")
    assert _args("--start_epoch", "3").start_epoch == 3 == _args("--start-epoch", "3").start_epoch
    assert _args("--wd", "0.5").weight_decay == 0.5 == _args("--weight-decay", "0.5").weight_decay
    assert _args("--model-kwargs", "box_batch_size_per_image=64", "image_mean=(0.5,0.5,0.5)").model_kwargs == [
        ("box_batch_size_per_image", 64),
        ("image_mean", (0.5, 0.5, 0.5)),
    ]


def test_unknown_model_is_a_usage_error():
    with pytest.raises(errors.UsageError, match="--model: unknown model 'maskrcnn_resnet51'"):
        train.main(_args("--model", "maskrcnn_resnet51", "--weights-backbone", "none"))


# ----------------------------------------------------------------------------- backbone weights


def test_missing_resnet50_stops_with_one_line_and_status_2(tmp_path, synthetic_root):
    output = tmp_path / "out"
    result = _run("--data-path", str(synthetic_root), "--output-dir", str(output), "--device", "cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(synthetic_root / "resnet50.pth") in lines[0] and "--weights-backbone none" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not output.exists()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(quirky_root, standin_resnet50, tmp_path_factory):
    """One epoch of maskrcnn_resnet50_fpn on the hand-written quirky dataset, from the backbone file train.py reads by
    default, <data-path>/resnet50.pth (a stand-in). SGD without momentum: the checkpoint holds no optimizer state
    (177 MB instead of 352 MB); the small model's resume tests (test_train_resume.py) check that state's round trip."""
    output, root = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("quirky_with_backbone")
    shutil.copytree(quirky_root, root, dirs_exist_ok=True)
    os.link(standin_resnet50, root / "resnet50.pth")
    flags = ["--data-path", str(root), "-b", "2", "--lr", "0.001", "--momentum", "0", *SMALL_RUN]
    tensorboard = ["--tensorboard"] if metrics_log.tensorboard_available() else []  # an optional extra
    result = _run(*flags, "--epochs", "1", "--output-dir", str(output), *tensorboard)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, flags, result


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


TRAIN_LINE = re.compile(r"Epoch: \[(\d+)\]  \[ *(\d+)/(\d+)\]  eta: \S+(?: \(run \S+\))?  lr: ([\d.]+)")
# What a checkpoint keeps of the dataset's classes (CocoDetection.classes), for predictions.
CLASS_KEYS = {"label_to_category_id", "categories", "keypoint_names", "keypoint_skeleton"}
MASK_RCNN_LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


@pytest.mark.slow
def test_training_writes_a_metrics_record_per_log_line_and_per_evaluation(trained):
    output, _, result = trained
    records = _metrics(output)
    training = [r for r in records if r["type"] == "train"]
    lines = TRAIN_LINE.findall(result.stdout)
    iters_per_epoch = int(lines[0][2])
    # --print-freq 1: a record for every iteration, with the lr its console line shows.
    assert [(r["epoch"], r["iteration"], f"{r['lr']:.6f}") for r in training] == [
        (int(e), int(i), lr) for e, i, _, lr in lines
    ]
    assert [r["global_iteration"] for r in training] == list(range(iters_per_epoch))
    for record in training:
        assert set(record["losses"]) == MASK_RCNN_LOSSES
        assert record["loss"] == pytest.approx(sum(record["losses"].values()))
        assert record["iter_time"] >= record["data_time"] >= 0
    (evaluation,) = [r for r in records if r["type"] == "eval"]
    assert (evaluation["epoch"], evaluation["global_iteration"]) == (0, iters_per_epoch)
    assert [r["type"] for r in records] == ["run", *["train"] * len(training), "eval", "analysis"]
    printed = [float(line.rsplit("= ", 1)[1]) for line in _ap_table(result.stdout)]  # 12 bbox, then 12 segm
    assert [*evaluation["bbox"].values(), *evaluation["segm"].values()] == pytest.approx(printed, abs=0.00051)


@pytest.mark.slow
def test_the_log_has_a_run_eta_a_per_category_table_and_a_closing_summary(trained):
    output, _, result = trained
    assert re.search(r"eta: \S+ \(run \S+\)  lr", result.stdout), result.stdout[:2000]
    (evaluation,) = [r for r in _metrics(output) if r["type"] == "eval"]
    for iou_type in ("bbox", "segm"):
        table = evaluation["per_category"][iou_type]
        assert list(table) == ["person", "car", "bottle"]
        printed = result.stdout.split(f"Per category ({iou_type}):")[1].splitlines()[2:5]
        for line, (name, numbers) in zip(printed, table.items()):
            assert line.split() == [name, *(f"{numbers[k]:.3f}" for k in ("AP", "AP50", "AP75"))]
    bbox, segm = evaluation["bbox"]["AP"], evaluation["segm"]["AP"]
    assert result.stdout.rstrip().splitlines()[-1] == (
        f"Done after epoch 0: bbox AP {bbox:.3f} (best {bbox:.3f}, epoch 0), segm AP {segm:.3f} (best {segm:.3f}, "
        f"epoch 0); checkpoints in {output}: checkpoint.pth, model_0.pth"
    )


@pytest.mark.slow
def test_eval_every_evaluates_every_nth_epoch_and_the_last(quirky_root, tmp_path):
    flags = ["--data-path", quirky_root, *TINY_MODEL, *SMALL_RUN, "--output-dir", tmp_path]
    result = processes.run([*script("train.py"), *flags, "--epochs", "4", "--eval-every", "2", "--no-report"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in _metrics(tmp_path) if r["type"] == "eval"] == [1, 3]
    assert len(_ap_table(result.stdout)) == 2 * 24
    # --no-report: neither the analysis nor the page
    assert "analysis" not in {r["type"] for r in _metrics(tmp_path)} and not (tmp_path / "report.html").exists()


def _scalar_tags(record: dict, prefix: str = "") -> list[str]:
    """The TensorBoard tags of a record's numbers (metrics_log.TensorBoardWriter's naming)."""
    tags = []
    for key, value in record.items():
        if key in metrics_log.TensorBoardWriter.BOOKKEEPING:
            continue
        if isinstance(value, dict):
            tags += _scalar_tags(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            tags.append(f"{prefix}{key}")
    return tags


@pytest.mark.slow
def test_the_run_records_its_command_and_ends_with_its_error_analysis_and_report(trained):
    output, flags, result = trained
    records = _metrics(output)
    run, evaluation, analysed = records[0], records[-2], records[-1]
    typed = ["train.py", *map(str, flags), "--epochs", "1", "--output-dir", str(output)]
    assert run["command"][: len(typed)] == typed  # then --tensorboard, where it is installed
    assert run["flags"]["epochs"] == 1 and run["flags"]["world_size"] == 1
    assert (analysed["of"], analysed["epoch"]) == ("eval", 0)
    for iou_type in ("bbox", "segm"):  # pycocotools' C75 / C50 are faster-coco-eval's AP75 / AP50
        assert analysed[iou_type]["ap"]["C75"] == pytest.approx(evaluation[iou_type]["AP75"], abs=1e-9)
        assert analysed[iou_type]["ap"]["C50"] == pytest.approx(evaluation[iou_type]["AP50"], abs=1e-9)
    page = (output / "report.html").read_text()
    assert f"Report: {output.name}" in page and "Error analysis:" in result.stdout
    assert f"\nReport: {output / 'report.html'}\nDone after epoch 0" in result.stdout


@pytest.mark.slow
def test_tensorboard_gets_the_numbers_of_metrics_jsonl(trained):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output, _, _ = trained
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    records = _metrics(output)
    training = [r for r in records if r["type"] == "train"]
    logged = [(e.step, e.value) for e in events.Scalars("train/losses/loss_mask")]
    assert logged == [(r["global_iteration"], pytest.approx(r["losses"]["loss_mask"], rel=1e-6)) for r in training]
    (evaluation,) = [r for r in records if r["type"] == "eval"]
    assert set(events.Tags()["scalars"]) == {f"{r['type']}/{tag}" for r in records if r["type"] in ("train", "eval")
                                             for tag in _scalar_tags(r)}  # fmt: skip
    assert [(e.step, e.value) for e in events.Scalars("eval/segm/AP50")] == [
        (evaluation["global_iteration"], pytest.approx(evaluation["segm"]["AP50"], rel=1e-6))
    ]


@pytest.mark.slow
def test_training_writes_plain_checkpoints_and_evaluates(trained):
    output, _, result = trained
    assert "Epoch: [0]" in result.stdout
    assert len(_ap_table(result.stdout)) == 24  # 12 bbox + 12 segm
    for name in ("model_0.pth", "checkpoint.pth"):
        checkpoint = torch.load(output / name, weights_only=True)
        assert set(checkpoint) == {
            "version", "model", "optimizer", "lr_scheduler", "epoch", "args", "train_state", *CLASS_KEYS
        }  # fmt: skip
        assert checkpoint["epoch"] == 0
        assert checkpoint["label_to_category_id"] == list(range(45))  # --data-path: the labels are the category ids
        assert checkpoint["categories"] == [
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
            {"id": 44, "name": "bottle"},
        ]
        state = checkpoint["train_state"]
        assert state["iteration"] is None and state["seed"] == 0 and len(state["rng"]) == 1
        assert sorted(state["order"].tolist()) == list(range(len(state["order"])))
        assert isinstance(checkpoint["args"], dict) and checkpoint["args"]["min_size"] == 96
    assert not list(output.glob(".*.tmp"))
    assert os.path.samefile(output / "model_0.pth", output / "checkpoint.pth")  # one write, two names


@pytest.mark.slow
def test_resume_continues_at_the_next_epoch(trained, tmp_path):
    """Also: with the default backbone file, the resumed model has frozen BatchNorm as the run had, so the checkpoint
    fits (what test_train_resume's default-backbone test checked mid-epoch, merged here)."""
    output, flags, _ = trained
    before = torch.load(output / "checkpoint.pth", weights_only=True)
    result = _run(*flags, "--epochs", "2", "--resume", str(output / "checkpoint.pth"), "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Epoch: [1]" in result.stdout and "Epoch: [0]" not in result.stdout
    after = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert after["epoch"] == 1 and (tmp_path / "model_1.pth").exists() and not (tmp_path / "model_0.pth").exists()
    iters_per_epoch = sum(r["type"] == "train" for r in _metrics(output))
    first = next(r for r in _metrics(tmp_path) if r["type"] == "train")
    assert (first["epoch"], first["iteration"], first["global_iteration"]) == (1, 0, iters_per_epoch)
    assert after["lr_scheduler"]["last_epoch"] == before["lr_scheduler"]["last_epoch"] + 1
    name = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(before["model"][name], after["model"][name])


@pytest.mark.slow
def test_test_only_and_torchrun_give_the_same_ap_table(trained):
    output, flags, _ = trained
    checkpoint = str(output / "checkpoint.pth")
    single = _run(*flags, "--test-only", "--resume", checkpoint, "--output-dir", str(output))
    assert single.returncode == 0, single.stderr[-3000:]
    assert "Epoch" not in single.stdout
    table = _ap_table(single.stdout)
    assert len(table) == 24
    assert "Evaluated 4 images" in single.stdout
    test_record, analysed = _metrics(output)[-2:]  # --test-only records its numbers and their analysis, and the page
    assert (test_record["type"], test_record["weights"], test_record["epoch"]) == ("test", checkpoint, 0)
    assert (analysed["type"], analysed["of"]) == ("analysis", "test")
    assert analysed["bbox"]["ap"]["C50"] == pytest.approx(test_record["bbox"]["AP50"], abs=1e-9)
    assert "--test-only of" in (output / "report.html").read_text()

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    dist = processes.run([*torchrun, *flags, "--test-only", "--weights", checkpoint, "--output-dir", output], env=env)
    assert dist.returncode == 0, dist.stdout[-3000:] + dist.stderr[-3000:]
    assert "world size 2, gloo" in dist.stdout
    assert "Evaluated 4 images" in dist.stdout  # both shards merged, none twice
    assert _ap_table(dist.stdout) == table  # one table, identical to the single-process one


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(quirky_root, trained, tmp_path):
    _, flags, _ = trained
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = processes.run([*torchrun, *flags, "--epochs", "1", "-j", "1", "--output-dir", tmp_path], env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(_ap_table(result.stdout)) == 24
    assert result.stdout.count("Epoch: [0] Total time") == 1  # only rank 0 prints
    iterations = [r["iteration"] for r in _metrics(tmp_path) if r["type"] == "train"]
    assert iterations == [
        int(i) for _, i, _, _ in TRAIN_LINE.findall(result.stdout)
    ]  # ... and only rank 0 writes metrics.jsonl
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 0


def test_resume_from_a_plain_state_dict_is_a_usage_error(tmp_path, synthetic_root):
    path = tmp_path / "weights_only.pth"
    model = torchvision.models.get_model("maskrcnn_tiny_fpn", num_classes=18)
    torch.save(model.state_dict(), path)
    args = _args("--data-path", str(synthetic_root), *TINY_MODEL, "--resume", str(path), "--device", "cpu")
    args.output_dir = str(tmp_path / "out")
    with pytest.raises(errors.UsageError, match="not a training checkpoint"):
        train.main(args)


@pytest.mark.slow
def test_sync_bn_on_cpu_under_torchrun_is_a_usage_error(synthetic_root, tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    result = processes.run(
        [*torchrun, "--data-path", synthetic_root, "--weights-backbone", "none", "--sync-bn", *SMALL_RUN,
         "--output-dir", tmp_path],
        timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.count("error: --sync-bn: SyncBatchNorm runs on GPUs only") == 1  # rank 0 only
    # torchrun reports the failed children; train.py itself shows no traceback
    assert 'train.py", line' not in result.stderr


@pytest.mark.slow
def test_channels_last_trains_in_that_format_and_its_checkpoint_evaluates_the_same(synthetic_root, tmp_path):
    flags = ["--data-path", synthetic_root, *TINY_MODEL, *SMALL_RUN, "-b", "2", "--lr", "0.001", "--channels-last"]
    code, out, err = run_train([*flags, "--epochs", "1", "--output-dir", tmp_path, "--no-report"])
    assert code == 0, err[-3000:]
    saved = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    convolution = saved["backbone.body.conv1.weight"]  # a checkpoint keeps the strides the model trained with
    assert convolution.is_contiguous(memory_format=torch.channels_last) and not convolution.is_contiguous()
    checkpoint = str(tmp_path / "checkpoint.pth")
    code, again, err = run_train([*flags, "--test-only", "--resume", checkpoint, "--no-report"])
    assert code == 0, err[-3000:]
    assert len(_ap_table(out)) == 24 and _ap_table(again) == _ap_table(out)


@pytest.mark.slow
def test_a_box_only_model_trains_and_evaluates_boxes(quirky_root, tmp_path):
    flags = ["--data-path", quirky_root, "--model", "fasterrcnn_tiny_fpn", "--weights-backbone", "none", *SMALL_RUN]
    code, out, err = run_train([*flags, "-b", "2", "--lr", "0.001", "--epochs", "1", "--output-dir", tmp_path])
    assert code == 0, err[-3000:]
    assert "IoU metric: bbox" in out and "IoU metric: segm" not in out
    assert len(_ap_table(out)) == 12
    saved = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["model"]
    assert "roi_heads.box_predictor.cls_score.weight" in saved and not any("mask" in name for name in saved)


def _own_flags(root: Path) -> list[str]:
    """A COCO layout's files given as your own data."""
    flags = []
    for split in ("train", "val"):
        ann_file = root / "annotations" / f"instances_{split}2017.json"
        flags += [f"--{split}-images", str(root / f"{split}2017"), f"--{split}-annotations", str(ann_file)]
    return flags


def _earlier_run(d: Path, t: Path) -> list[str]:
    (t / "out" / "checkpoint.pth").write_text("an earlier run's checkpoint")
    return []


BAD_INPUTS = {
    "missing data path": (lambda d, t: ["--data-path", str(t / "nowhere")], "--data-path: "),
    "data path without COCO layout": (lambda d, t: ["--data-path", str(t)], "should hold train2017/, val2017/"),
    "batch size 0": (lambda d, t: ["-b", "0"], "-b/--batch-size: must be at least 1, got 0"),
    "print freq 0": (lambda d, t: ["--print-freq", "0"], "--print-freq: must be at least 1"),
    "epochs 0": (lambda d, t: ["--epochs", "0"], "--epochs: must be at least 1"),
    "negative workers": (lambda d, t: ["-j", "-1"], "-j/--workers: must be at least 0"),
    "lr 0": (lambda d, t: ["--lr", "0"], "--lr: must be a positive number, got 0.0"),
    "lr inf": (lambda d, t: ["--lr", "inf"], "--lr: must be a positive number, got inf"),
    "epochs 1.5": (lambda d, t: ["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5' (python "),
    "an unknown flag": (lambda d, t: ["--epohcs", "2"], "unrecognized arguments: --epohcs 2"),
    "min size 0": (lambda d, t: ["--min-size", "0"], "--min-size: must be at least 1, got 0"),
    "min size -5": (lambda d, t: ["--min-size", "-5"], "--min-size: must be at least 1, got -5"),
    "trainable backbone layers 6": (
        lambda d, t: ["--model", "maskrcnn_resnet50_fpn", "--trainable-backbone-layers", "6"],
        "--trainable-backbone-layers: maskrcnn_resnet50_fpn's backbone has 5 stages to train, so 0 to 5; got 6",
    ),
    "no RoIs sampled": (
        lambda d, t: ["--model-kwargs", "box_batch_size_per_image=0"],
        "--model-kwargs: box_batch_size_per_image is proposals sampled per image, at least 1; got 0",
    ),
    "a positive fraction above 1": (
        lambda d, t: ["--model-kwargs", "rpn_positive_fraction=1.5"],
        "--model-kwargs: rpn_positive_fraction is a fraction, between 1e-09 and 1; got 1.5",
    ),
    "lr steps decreasing": (lambda d, t: ["--lr-steps", "5", "3"], "--lr-steps: epochs must increase, got 5 3"),
    "unknown model": (
        lambda d, t: ["--model", "maskrcnn_resnet51_fpn"],
        "--model: unknown model 'maskrcnn_resnet51_fpn'",
    ),
    "keypoint model": (
        lambda d, t: ["--model", "keypointrcnn_resnet50_fpn"],
        "--model: keypointrcnn_resnet50_fpn needs keypoint annotations; add --dataset coco_kp",
    ),
    "keypoints without person_keypoints files": (
        lambda d, t: ["--dataset", "coco_kp", "--model", "keypointrcnn_resnet50_fpn"],
        "annotations/person_keypoints_train2017.json is missing",
    ),
    "keypoints from instances files": (
        lambda d, t: ["--dataset", "coco_kp", "--model", "keypointrcnn_resnet50_fpn", *_own_flags(d)],
        'instances_train2017.json: no category lists "keypoints" names, so this is not a keypoint annotation file; '
        "--dataset coco_kp",
    ),
    "train images without annotations": (
        lambda d, t: ["--train-images", str(d / "train2017")],
        "--train-images: needs --train-annotations too",
    ),
    "val annotations without images": (
        lambda d, t: ["--val-annotations", str(d / "annotations" / "instances_val2017.json")],
        "--val-annotations: needs --val-images too",
    ),
    "own training data without val": (
        lambda d, t: _own_flags(d)[:4],
        "--val-images/--val-annotations: missing; your own data needs its evaluation split too",
    ),
    "own training data without val, evaluation only": (
        lambda d, t: [*_own_flags(d)[:4], "--test-only"],
        "--val-images/--val-annotations: missing; your own data needs its evaluation split too",
    ),
    "own val data without train": (lambda d, t: _own_flags(d)[4:], "--train-images/--train-annotations: missing"),
    "own annotation file missing": (
        lambda d, t: [*_own_flags(d)[:6], "--val-annotations", "no_such_labels.json"],
        "--val-annotations: no_such_labels.json does not exist; pass a COCO-format annotation file",
    ),
    "save predictions without output dir": (
        lambda d, t: ["--save-predictions", "--output-dir", ""],
        "--save-predictions: needs --output-dir, where it writes predictions_*.json",
    ),
    "num_classes as a model kwarg": (
        lambda d, t: ["--model-kwargs", "num_classes=91"],
        "--model-kwargs: num_classes is not a model argument here: the classes and keypoints come from the dataset",
    ),
    "misspelt model kwarg": (
        lambda d, t: ["--model-kwargs", "box_batch_size_per_imag=3"],
        "has no argument box_batch_size_per_imag",
    ),
    "checkpoint every -1": (lambda d, t: ["--checkpoint-every", "-1"], "--checkpoint-every: must be at least 0"),
    "keep 0 checkpoints": (lambda d, t: ["--keep-checkpoints", "0"], "--keep-checkpoints: must be at least 1"),
    "clip grad norm 0": (lambda d, t: ["--clip-grad-norm", "0"], "--clip-grad-norm: must be a positive number"),
    "dist timeout 0": (lambda d, t: ["--dist-timeout", "0"], "--dist-timeout: must be a positive number"),
    "copy-paste without lsj": (
        lambda d, t: ["--use-copypaste"],
        "--use-copypaste: works only with --data-augmentation lsj",
    ),
    "auto-resume without output dir": (
        lambda d, t: ["--auto-resume", "--output-dir", ""],
        "--auto-resume: needs --output-dir",
    ),
    "tensorboard without output dir": (
        lambda d, t: ["--tensorboard", "--output-dir", ""],
        "--tensorboard: needs --output-dir",
    ),
    "output dir is a file": (lambda d, t: ["--output-dir", str(t / "file.txt")], "is a file, not a folder"),
    "output dir under a file": (
        lambda d, t: ["--output-dir", str(t / "file.txt" / "sub")],
        "--output-dir: cannot write to",
    ),
    "output dir of an earlier run": (_earlier_run, "already holds checkpoint.pth from an earlier run"),
    "weights not a checkpoint": (
        lambda d, t: ["--weights", str(t / "file.txt")],
        "is not a file written by torch.save",
    ),
    "resume missing": (lambda d, t: ["--resume", str(t / "gone.pth")], "--resume: model checkpoint file"),
    "resume not a checkpoint": (lambda d, t: ["--resume", str(t / "file.txt")], "--resume: "),
    "resume a folder": (
        lambda d, t: ["--resume", str(t / "out")],
        "out is a folder; pass a model checkpoint file in it, e.g. /",
    ),
    "weights a pickle with a payload": (
        lambda d, t: ["--weights", _raw_payload_file(t)],
        "holds pickled Python objects, which could run code when loaded, so it was refused and nothing in it ran",
    ),
    "weights with a pickle payload": (
        lambda d, t: ["--weights", _payload_file(t)],
        "holds pickled Python objects (such as ",
    ),
    "weights cut short": (lambda d, t: ["--weights", _truncated_weights(t)], "is not a file written by torch.save"),
    "weights of another architecture": (
        lambda d, t: ["--weights", _keypoint_weights(t)],
        "does not fit MaskRCNN: ",
    ),
}


class _Payload:
    """Unpickling this would create a file (which the test would find): the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _payload_file(folder: Path) -> str:
    path = folder / "payload.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.02), "extra": _Payload(folder / "code_ran")}, path)
    return str(path)


def _raw_payload_file(folder: Path) -> str:
    """pickle.dump, not torch.save: a file that would run a shell command when loaded without weights_only."""
    path = folder / "payload.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": _ShellPayload(folder / "shell_ran")}, f)
    return str(path)


class _ShellPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated_weights(folder: Path) -> str:
    path = folder / "cut.pth"
    torch.save(torchvision.models.get_model("maskrcnn_tiny_fpn", num_classes=18).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return str(path)


def _keypoint_weights(folder: Path) -> str:
    path = folder / "keypoint_rcnn.pth"
    torch.save(torchvision.models.get_model("keypointrcnn_tiny_fpn").state_dict(), path)
    return str(path)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_one_line_and_status_2_and_overwrites_nothing(case, synthetic_root, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a checkpoint")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model_0.pth").write_text("an earlier run's epoch file")
    make_flags, expected = BAD_INPUTS[case]
    flags = _small_run_from_scratch(synthetic_root, tmp_path / "out")
    extra = make_flags(synthetic_root, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert train.cli([*flags, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == {
        p: p.read_bytes() for p in before if p.exists()
    }


def test_a_data_path_with_a_trailing_space_is_named_not_the_backbone_file(synthetic_root, capsys):
    """The default backbone file lies under --data-path: the data path is what is wrong."""
    assert train.cli(["--data-path", f"{synthetic_root} ", *SMALL_RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --data-path: '{synthetic_root} ' is not a folder (it begins or ends with a space); pass the COCO root "
        "holding train2017/, val2017/ and annotations/"
    )


def test_no_room_for_a_checkpoint_stops_before_training_with_one_line(synthetic_root, tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage._replace(free=10**6))
    assert train.cli(_small_run_from_scratch(synthetic_root, tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --output-dir: {tmp_path / 'out'} has 1000000 bytes"), err
    assert "needs about" in err[0] and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_lr_steps_beyond_the_epochs_are_said(synthetic_root, tmp_path, capsys):
    assert train.cli([*_small_run_from_scratch(synthetic_root, tmp_path), "--lr-steps", "3", "--epochs", "2",
                      "--test-only"]) == 0  # fmt: skip
    assert "Note: --lr-steps 3: at or beyond --epochs 2, so the lr never decays there" in capsys.readouterr().out


def test_tensorboard_without_its_package_is_a_usage_error_before_any_work(
    synthetic_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package looks like to import
    output = tmp_path / "out"
    flags = [*_small_run_from_scratch(synthetic_root, output), "--tensorboard"]
    assert train.cli(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --tensorboard: needs the tensorboard package: pip install tensorboard "
        "(or pip install -r requirements-extras.txt)"
    ]
    assert not output.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_dir_that_cannot_be_written_is_a_usage_error(synthetic_root, tmp_path, capsys):
    (tmp_path / "locked").mkdir(mode=0o500)
    flags = [
        "--data-path",
        str(synthetic_root),
        "--weights-backbone",
        "none",
        "--output-dir",
        str(tmp_path / "locked"),
        *SMALL_RUN,
    ]
    assert train.cli(flags) == 2
    assert "--output-dir: cannot write to" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_usage_error():
    with pytest.raises(errors.UsageError, match="--device cuda: no CUDA device"):
        train.main(_args("--device", "cuda", "--weights-backbone", "none"))


@pytest.mark.slow
def test_resume_with_another_optimizer_names_both_values(trained, capsys):
    output, flags, _ = trained
    code = train.cli(
        [
            *flags,
            "--opt",
            "adamw",
            "--epochs",
            "2",
            "--resume",
            str(output / "checkpoint.pth"),
            "--output-dir",
            str(output),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--opt: this command says adamw but" in err and "was trained with sgd" in err
    assert "--allow-changed-flags" in err
    resume = ["--resume", str(output / "checkpoint.pth"), "--output-dir", str(output)]
    assert train.cli([*flags, "--opt", "adamw", "--epochs", "2", "--allow-changed-flags", *resume]) == 2
    assert "does not fit this run (it was saved with --opt sgd" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_past_the_last_epoch_says_so(trained, tmp_path):
    output, flags, _ = trained
    result = _run(*flags, "--epochs", "1", "--resume", str(output / "checkpoint.pth"), "--output-dir", str(tmp_path))
    assert result.returncode == 0
    assert "Nothing to train:" in result.stdout and "raise --epochs" in result.stdout


@pytest.fixture(scope="module")
def five_class_weights(tmp_path_factory) -> Path:
    """Whole-model weights for 5 classes (the synthetic dataset needs 18: its largest category id is 17)."""
    path = tmp_path_factory.mktemp("weights") / "five_classes.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.get_model("maskrcnn_tiny_fpn", num_classes=5).state_dict(), path)
    return path


def test_evaluating_weights_for_other_classes_explains_num_classes(
    five_class_weights, synthetic_root, tmp_path, capsys
):
    """Training fine-tunes such weights to the dataset's classes (tests/test_train_weights.py); evaluating cannot."""
    flags = ["--data-path", str(synthetic_root), "--weights", str(five_class_weights), "--output-dir", str(tmp_path)]
    flags += [*SMALL_RUN, "--model", "maskrcnn_tiny_fpn", "--test-only"]
    assert train.cli(flags) == 2
    err = capsys.readouterr().err.strip()
    assert f"--weights: {five_class_weights} does not fit MaskRCNN: it was trained for num_classes=5" in err
    assert (
        "this dataset needs 18 (labels and the background; see --label-mapping); use one trained on the same categories"
        in err
    )
    assert "\n" not in err


def test_weights_of_another_model_name_the_keys(five_class_weights, synthetic_root, tmp_path, capsys):
    flags = ["--data-path", str(synthetic_root), "--weights", str(five_class_weights), "--output-dir", str(tmp_path)]
    flags += SMALL_RUN
    assert train.cli([*flags, "--model", "fasterrcnn_tiny_fpn", "--test-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit FasterRCNN: it was trained for num_classes=5 and this dataset needs 18" in err
    assert re.search(r"; \d+ unexpected keys \(roi_heads.mask_head\.", err)
    assert "was it saved from another --model?" in err and "\n" not in err


# ----------------------------------------------------------------------------- keypoints, your own data, predictions

# SMALL_RUN with fewer sampled boxes and detections (the keypoint head, 8 convolutions of 512 channels, runs on each of
# them) and a frozen backbone: a run of 2 iterations and 4 to 8 evaluated images takes seconds. No score threshold, so
# that a model trained this little still detects something.
FAST_RUN = [
    *SMALL_RUN[: SMALL_RUN.index("--model-kwargs")], "--trainable-backbone-layers", "0",
    "--model-kwargs", "box_batch_size_per_image=4",
    "box_detections_per_img=5", "box_score_thresh=0.0", "rpn_pre_nms_top_n_train=50", "rpn_post_nms_top_n_train=50",
    "rpn_pre_nms_top_n_test=50", "rpn_post_nms_top_n_test=50",
]  # fmt: skip
KEYPOINT_STAT_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


@pytest.fixture(scope="module")
def small_kp_root(tmp_path_factory) -> Path:
    """The keypoint variant with 8 training images (2 iterations of 4) and 4 for evaluation."""
    return synthetic_people.generate_keypoints(tmp_path_factory.mktemp("small_kp"), num_train=8, num_val=4, seed=0)


@pytest.mark.slow
def test_keypoint_rcnn_trains_and_evaluates_keypoints(small_kp_root, tmp_path):
    model = ["--dataset", "coco_kp", "--model", "keypointrcnn_tiny_fpn"]
    flags = [
        *model,
        "--data-path",
        small_kp_root,
        "--weights-backbone",
        "none",
        "--epochs",
        "1",
        "-b",
        "4",
        "--lr",
        "0.001",
    ]
    code, out, err = run_train([*flags, "--output-dir", tmp_path, *FAST_RUN])
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Epoch: [0]" in out and "IoU metric: segm" not in out
    lines = list(AP_LINE.finditer(out.split("IoU metric: keypoints", 1)[1]))
    assert len(lines) == 10
    assert [m.group(1) for m in lines] == ["Precision"] * 5 + ["Recall"] * 5 and {m.group(5) for m in lines} == {"20"}
    printed = [float(m.group(6)) for m in lines]
    assert all(value == -1 or 0 <= value <= 1 for value in printed)
    records = _metrics(tmp_path)
    assert all("loss_keypoint" in r["losses"] for r in records if r["type"] == "train")
    evaluation = [r for r in records if r["type"] == "eval"][-1]
    assert evaluation["type"] == "eval" and set(evaluation) == {
        "type",
        "epoch",
        "global_iteration",
        "bbox",
        "keypoints",
        "per_category",
        "timestamp",
    }
    assert list(evaluation["per_category"]) == ["bbox", "keypoints"]
    assert list(evaluation["per_category"]["keypoints"]) == ["person"]
    assert list(evaluation["keypoints"]) == KEYPOINT_STAT_NAMES
    assert list(evaluation["keypoints"].values()) == pytest.approx(printed, abs=0.00051)
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert (
        checkpoint["keypoint_names"] == list(synthetic_people.COCO_PERSON_KEYPOINT_NAMES)
        and len(checkpoint["keypoint_names"]) == 17
    )
    assert checkpoint["categories"] == [{"id": 1, "name": "person"}] and checkpoint["label_to_category_id"] == [0, 1]
    assert checkpoint["keypoint_skeleton"] == synthetic_people.PERSON_CATEGORY["skeleton"]
    # one heatmap per keypoint
    assert checkpoint["model"]["roi_heads.keypoint_predictor.kps_score_lowres.weight"].shape[1] == 17


def _subset(data: dict, count: int) -> dict:
    images = data["images"][:count]
    kept = {image["id"] for image in images}
    return {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in kept]}


@pytest.fixture(scope="module")
def own_data(synthetic_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """The synthetic dataset as one's own: pictures/{train,val}/ and {train,val}_labels.json, with 8 training
    images (2 iterations of 4); the flags that name them."""
    root = tmp_path_factory.mktemp("own")
    flags = []
    for split, count in (("train", 8), ("val", None)):
        shutil.copytree(synthetic_root / f"{split}2017", root / "pictures" / split)
        data = json.loads((synthetic_root / "annotations" / f"instances_{split}2017.json").read_text())
        (root / f"{split}_labels.json").write_text(json.dumps(_subset(data, count) if count else data))
        flags += [
            f"--{split}-images",
            str(root / "pictures" / split),
            f"--{split}-annotations",
            str(root / f"{split}_labels.json"),
        ]
    return root, flags


@pytest.fixture(scope="module")
def own_trained(own_data, tmp_path_factory) -> tuple[Path, list[str], str]:
    """One epoch of the small Mask R-CNN on one's own data, with --save-predictions: the output dir, the flags,
    stdout."""
    _, data_flags = own_data
    output = tmp_path_factory.mktemp("own_run")
    flags = [*TINY_MODEL, "-b", "4", "--lr", "0.001", *FAST_RUN]
    code, out, err = run_train([*data_flags, *flags, "--epochs", "1", "--save-predictions", "--output-dir", output])
    assert code == 0, out[-3000:] + err[-3000:]
    return output, flags, out


@pytest.mark.slow
def test_own_data_trains_with_contiguous_labels(own_trained):
    output, _, out = own_trained
    assert "Epoch: [0]  [1/2]" in out and len(_ap_table(out)) == 24
    checkpoint = torch.load(output / "checkpoint.pth", weights_only=True)
    assert checkpoint["label_to_category_id"] == [0, 2, 5, 11, 17]
    assert [c["id"] for c in checkpoint["categories"]] == [2, 5, 11, 17] and checkpoint["categories"][0] == {
        "id": 2,
        "name": "disc",
    }
    assert (checkpoint["keypoint_names"], checkpoint["keypoint_skeleton"]) == ([], [])
    assert checkpoint["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5
    assert checkpoint["model"]["roi_heads.mask_predictor.mask_fcn_logits.weight"].shape[0] == 5


@pytest.mark.slow
def test_a_file_as_exporters_write_it_trains_with_its_fills_and_unused_category_said(exported_root, tmp_path):
    """ids from 0, no area or iscrowd, a supercategory as category 0, images in nested folders."""
    data = [f"--{split}-{kind}" for split in ("train", "val") for kind in ("images", "annotations")]
    values = [
        v
        for split in ("train", "val")
        for v in (exported_root / split, exported_root / split / "_annotations.coco.json")
    ]
    flags = [item for pair in zip(data, map(str, values)) for item in pair]
    code, out, err = run_train([*flags, *TINY_MODEL, "--output-dir", tmp_path, "--epochs", "1",
                                "-b", "4", "--lr", "0.001", "--opt", "adamw", *SMALL_RUN])  # fmt: skip
    assert code == 0, err[-3000:]
    assert err.count("no annotation uses category 0 (shapes)") == 1 and "left out of the labels" in err
    assert out.count('without "area"') == 1 and out.count("annotation ids start at 0") == 1
    assert len(_ap_table(out)) == 24
    checkpoint = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert checkpoint["label_to_category_id"] == [0, 1, 2, 3, 4]  # category 0 got no output class


def _pycocotools_bbox_stats(ann_file: Path, results: list[dict]) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        evaluation = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats.tolist()


@pytest.mark.slow
def test_saved_predictions_hold_category_ids(own_data, own_trained):
    root, _ = own_data
    output, _, _ = own_trained
    predictions = json.loads((output / "predictions_0.json").read_text())
    assert predictions and set(predictions[0]) == {"image_id", "category_id", "score", "bbox", "segmentation"}
    category_ids = {p["category_id"] for p in predictions}
    assert category_ids <= {2, 5, 11, 17} and category_ids - {2}  # labels 1..4 mapped back, not written as they are
    val = json.loads((root / "val_labels.json").read_text())
    assert {p["image_id"] for p in predictions} <= {image["id"] for image in val["images"]}
    # The results file scores as the run's own evaluation did.
    evaluation = [r for r in _metrics(output) if r["type"] == "eval"][-1]
    assert _pycocotools_bbox_stats(root / "val_labels.json", predictions) == pytest.approx(
        list(evaluation["bbox"].values()), abs=1e-12
    )


@pytest.mark.slow
def test_test_only_evaluates_with_the_checkpoints_label_mapping(own_data, own_trained, tmp_path):
    root, data_flags = own_data
    output, flags, trained_out = own_trained
    # The evaluation file also lists a category with no annotations: labelled as it says, the model would need 6
    # classes.
    val = json.loads((root / "val_labels.json").read_text())
    val["categories"].append({"id": 23, "name": "extra", "supercategory": "shape"})
    (tmp_path / "val_labels.json").write_text(json.dumps(val))
    val_flags = [*data_flags[4:6], "--val-annotations", tmp_path / "val_labels.json"]
    code, out, err = run_train(
        [
            *val_flags,
            *flags,
            "--test-only",
            "--resume",
            output / "checkpoint.pth",
            "--save-predictions",
            "--output-dir",
            tmp_path,
        ]
    )
    assert code == 0, out[-3000:] + err[-3000:]
    assert "Epoch" not in out and len(_ap_table(out)) == 24
    assert _ap_table(out) == _ap_table(trained_out)  # the model evaluated right after training, scored alike
    assert f"Saved the detections to {tmp_path / 'predictions.json'}" in out
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    during_training = json.loads((output / "predictions_0.json").read_text())
    assert predictions == during_training  # the same model as built for training, on the same images
    assert not list(tmp_path.glob("predictions_*.json")) and not (tmp_path / "checkpoint.pth").exists()


LABEL_MAPPINGS = [
    ("own", "auto", [0, 2, 5, 11, 17]),
    ("own", "category-ids", list(range(18))),
    ("own", "contiguous", [0, 2, 5, 11, 17]),
    ("data-path", "auto", list(range(18))),
    ("data-path", "contiguous", [0, 2, 5, 11, 17]),
]


@pytest.mark.parametrize("data, mapping, expected", LABEL_MAPPINGS, ids=[f"{d}-{m}" for d, m, _ in LABEL_MAPPINGS])
def test_label_mapping_sets_the_number_of_classes(synthetic_root, data, mapping, expected):
    data_flags = _own_flags(synthetic_root) if data == "own" else ["--data-path", str(synthetic_root)]
    args = _args(
        *data_flags, "--label-mapping", mapping, "--weights-backbone", "none", "--min-size", "64", "--max-size", "64"
    )
    dataset_train, dataset_test = train.load_datasets(args, None)
    assert dataset_train.label_to_category_id == dataset_test.label_to_category_id == expected
    assert dataset_test.num_classes == len(expected)
    model = models.build_model_or_explain(models.ModelSpec.from_args(args), dataset_test.num_classes)
    assert model.roi_heads.box_predictor.cls_score.out_features == len(expected)
    # A trained model's mapping (resuming, or evaluating it) wins over the flag.
    assert train.load_datasets(args, [0, 17, 11, 5, 2])[1].label_to_category_id == [0, 17, 11, 5, 2]


def test_the_trained_label_mapping_comes_from_the_checkpoint_or_evaluated_weights():
    classes = Classes(label_to_category_id=[0, 2, 5, 11, 17], categories=[])
    mapping = ckpt.Checkpoint(model={}, classes=classes)
    assert train._trained_label_mapping(_args(), None, mapping) == [0, 2, 5, 11, 17]  # --resume
    assert train._trained_label_mapping(_args("--test-only"), mapping, None) == [
        0,
        2,
        5,
        11,
        17,
    ]  # --test-only --weights
    assert train._trained_label_mapping(_args(), mapping, None) is None  # fine-tuning --weights: the data's labels
    # a checkpoint from before label mappings
    assert train._trained_label_mapping(_args(), None, ckpt.Checkpoint.from_dict({"model": {}})) is None
    assert train._trained_label_mapping(_args(), None, None) is None

"""engine.py: the loss falls under train_one_epoch, warm-up follows the reference, a NaN stops the run,
a stop signal ends the epoch after a whole step, gradients clip, each log line comes with a metrics record,
evaluate() encodes the model's masks as its own pasting does and scores every image with either backend."""

import json
import math
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from pycocotools import mask as mask_utils

import engine
import utils
from coco_eval import CocoEvaluator, Evaluator, named_stats
from coco_utils import get_coco
from engine import (
    NonFiniteLossError,
    TrainingStopped,
    evaluate,
    evaluation_record,
    images_to_device,
    train_one_epoch,
)
from solver import LinearWarmup
from transforms import get_transform

SMALL_RCNN = dict(
    min_size=64,
    max_size=96,
    box_batch_size_per_image=32,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=100,
)


def _model(num_classes: int, name: str = "maskrcnn_resnet50_fpn") -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(
        name, weights=None, weights_backbone=None, num_classes=num_classes, **SMALL_RCNN
    )


class _Repeat(torch.utils.data.Dataset):
    """The same few samples over and over: a loss that can only fall if training works."""

    def __init__(self, dataset, indices, times):
        self.items = [dataset[i] for i in indices] * times

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_images_to_device_scales_uint8_to_unit_range():
    image = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)
    (moved,) = images_to_device([image], torch.device("cpu"))
    assert moved.dtype == torch.float32
    assert moved.min() == 0 and moved.max() == 1
    assert torch.allclose(moved * 255, image.float())


@pytest.mark.slow
def test_loss_falls_over_a_few_iterations(synthetic_root):
    dataset = get_coco(synthetic_root, "train", get_transform(train=False))
    loader = torch.utils.data.DataLoader(_Repeat(dataset, [0, 1], 8), batch_size=2, collate_fn=utils.collate_fn)
    model = _model(dataset.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    logger = train_one_epoch(model, optimizer, loader, torch.device("cpu"), epoch=1, print_freq=100)
    losses = list(logger.meters["loss"].deque)
    assert len(losses) == 8
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) / 2 < 0.6 * losses[0], losses
    assert set(logger.meters) >= {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
        "lr",
    }


@pytest.mark.slow
def test_non_finite_loss_stops_before_the_optimizer_step_and_names_the_losses(synthetic_root):
    dataset = get_coco(synthetic_root, "train", get_transform(train=False))
    loader = torch.utils.data.DataLoader(_Repeat(dataset, [0], 2), batch_size=1, collate_fn=utils.collate_fn)
    model = _model(dataset.num_classes)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.fill_(float("nan"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, iteration 0 \(.*loss_classifier=nan"):
        train_one_epoch(model, optimizer, loader, torch.device("cpu"), epoch=1, print_freq=100)
    # The check runs before the optimizer step: no parameter was touched (BatchNorm statistics move in any forward).
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)


class _TinyDetector(torch.nn.Module):
    """A one-parameter stand-in for a detection model: loss = (w - 3)^2 per image, so steps are cheap and known."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images, targets):
        return {"loss_a": sum((self.w - 3) ** 2 * image.mean() for image in images) / len(images)}


def _tiny_loader(batches: int):
    images = [torch.full((1, 4, 4), 255, dtype=torch.uint8)] * batches
    return [((image,), ({"image_id": i},)) for i, image in enumerate(images)]


def test_a_stop_signal_ends_the_epoch_after_a_whole_step():
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stop = engine.StopSignal()
    steps = []

    def after_step(done):
        steps.append(done)
        if done == 3:
            stop.signum = 15  # what the SIGTERM handler records

    with pytest.raises(TrainingStopped) as stopped:
        train_one_epoch(
            model, optimizer, _tiny_loader(10), torch.device("cpu"), 2, 100, stop=stop, after_step=after_step
        )
    assert (stopped.value.epoch, stopped.value.iteration, stopped.value.signum) == (2, 4, 15)
    assert steps == [1, 2, 3]  # the fourth step ran, then training stopped before asking for more
    w = 0.0
    for _ in range(4):
        w -= 0.1 * 2 * (w - 3)
    assert model.w.item() == pytest.approx(w)


def test_first_iteration_numbers_a_resumed_epoch_and_sets_its_warmup_lr():
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    done = []
    train_one_epoch(
        model, optimizer, _tiny_loader(3), torch.device("cpu"), 0, 100, first_iteration=7, after_step=done.append
    )
    assert done == [8, 9, 10]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * LinearWarmup(optimizer, 10).factor(9))


def test_clip_grad_norm_bounds_each_step():
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    logger = train_one_epoch(model, optimizer, _tiny_loader(1), torch.device("cpu"), 1, 100, clip_grad_norm=0.5)
    assert model.w.item() == pytest.approx(0.5)  # the gradient -6 was clipped to norm 0.5
    assert logger.meters["grad_norm"].value == pytest.approx(6.0)


def _expected_losses(lr: float, iterations: int) -> list[float]:
    """_TinyDetector's loss at each SGD step: (w - 3)^2, with w -= lr * 2 (w - 3) and w starting at 0."""
    w, losses = 0.0, []
    for _ in range(iterations):
        losses.append((w - 3) ** 2)
        w -= lr * 2 * (w - 3)
    return losses


def test_a_metrics_record_goes_with_every_log_line_holding_the_logged_values(capsys):
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    train_one_epoch(
        model, optimizer, _tiny_loader(5), torch.device("cpu"), 3, print_freq=2, write_metrics=records.append
    )
    logged = [line for line in capsys.readouterr().out.splitlines() if "]  eta: " in line]
    assert [r["iteration"] for r in records] == [0, 2, 4] and len(logged) == 3  # one record per console line
    expected = _expected_losses(0.1, 5)
    for record, line in zip(records, logged):
        i = record["iteration"]
        assert (record["type"], record["epoch"], record["global_iteration"]) == ("train", 3, 3 * 5 + i)
        assert record["losses"] == {"loss_a": pytest.approx(expected[i])} and record["loss"] == pytest.approx(
            expected[i]
        )
        assert record["lr"] == 0.1 and f"lr: {record['lr']:.6f}" in line
        assert record["iter_time"] >= record["data_time"] >= 0 and abs(record["timestamp"] - time.time()) < 60
        assert "grad_norm" not in record and ("max_mem_mb" in record) == torch.cuda.is_available()


def test_a_resumed_epoch_numbers_its_records_from_its_first_iteration():
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    train_one_epoch(
        model, optimizer, _tiny_loader(3), torch.device("cpu"), 2, 2, first_iteration=7, write_metrics=records.append
    )
    # Iterations 7, 8, 9 of a 10-iteration epoch: lines at multiples of print_freq and at the last iteration.
    assert [(r["iteration"], r["global_iteration"]) for r in records] == [(8, 28), (9, 29)]


def test_metrics_records_carry_the_gradient_norm_when_clipping():
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    records = []
    train_one_epoch(
        model, optimizer, _tiny_loader(1), torch.device("cpu"), 1, 100, clip_grad_norm=0.5, write_metrics=records.append
    )
    assert records[0]["grad_norm"] == pytest.approx(6.0)  # before clipping, as logged


class _SlowLoader:
    """Batches that each take `delay` seconds to arrive."""

    def __init__(self, batches: int, delay: float):
        self.batches, self.delay = _tiny_loader(batches), delay

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            time.sleep(self.delay)
            yield batch


def test_metrics_records_measure_the_wait_for_data():
    records = []
    model = _TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, optimizer, _SlowLoader(2, 0.05), torch.device("cpu"), 1, 1, write_metrics=records.append)
    assert len(records) == 2
    assert all(r["iter_time"] >= r["data_time"] >= 0.05 for r in records)


def test_evaluation_record_names_the_twelve_numbers_of_each_iou_type():
    stats = {"bbox": [0.5 + i / 100 for i in range(12)], "segm": [0.25 + i / 100 for i in range(12)]}
    coco_evals = {t: SimpleNamespace(stats=np.array(v)) for t, v in stats.items()}
    record = evaluation_record(named_stats(coco_evals), epoch=4, global_iteration=50)
    assert (record["type"], record["epoch"], record["global_iteration"]) == ("eval", 4, 50)
    # pycocotools' order
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    assert record["bbox"] == dict(zip(names, stats["bbox"]))
    assert list(record["segm"].values()) == stats["segm"] and list(record["segm"]) == list(record["bbox"])
    assert all(type(v) is float for v in record["bbox"].values())  # numpy floats would not serialize to JSON
    json.dumps(record)


@pytest.mark.slow
def test_evaluate_pastes_masks_as_the_model_does_and_backends_agree(synthetic_root):
    """evaluate() keeps the model's masks unpasted and encodes them box by box: the RLEs are the
    model's own pasted masks thresholded (pycocotools' encoding), and both backends give the same numbers."""
    dataset = get_coco(synthetic_root, "val", get_transform(train=False))
    # batches of one, as the one-image forward below
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=utils.collate_fn)
    model = _model(dataset.num_classes, "maskrcnn_tiny_fpn")  # the pasting is the heads' and transform's, not R50's
    with torch.no_grad():  # spread the untrained mask logits, so that probabilities are not all near 0.5
        model.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(30)
    evaluator = evaluate(model, loader, torch.device("cpu"))
    assert evaluator.backend == "faster_coco_eval"
    assert evaluator.img_ids == sorted(dataset.ids)
    assert set(evaluator.coco_eval) == {"bbox", "segm"}
    # the same results scored by pycocotools
    by_pycocotools = CocoEvaluator(evaluator.coco_gt, ["bbox", "segm"], backend="pycocotools")
    by_pycocotools.image_results = dict(evaluator.image_results)
    by_pycocotools.accumulate()
    by_pycocotools.summarize()
    for iou_type in ("bbox", "segm"):
        assert len(evaluator.coco_eval[iou_type].stats) == 12
        np.testing.assert_allclose(
            evaluator.coco_eval[iou_type].stats, by_pycocotools.coco_eval[iou_type].stats, rtol=0, atol=1e-12
        )

    results = evaluator.image_results
    compared = 0
    with torch.inference_mode():
        for index in range(len(dataset)):
            image, target = dataset[index]
            (output,) = model(images_to_device([image], torch.device("cpu")))  # the model's own pasting
            result = results[target["image_id"]]
            np.testing.assert_array_equal(result["scores"], output["scores"].numpy())
            height, width = image.shape[-2:]
            assert tuple(result["mask_size"]) == (height, width)
            for counts, probabilities in zip(result["rles"], output["masks"][:, 0].numpy()):
                expected = mask_utils.encode(np.asfortranarray((probabilities > 0.5).astype(np.uint8)))["counts"]
                if counts != expected:  # only where float rounding puts a pixel on the other side of 0.5
                    ours = mask_utils.decode({"size": [height, width], "counts": counts})
                    differ = ours != mask_utils.decode({"size": [height, width], "counts": expected})
                    assert np.abs(probabilities[differ] - 0.5).max() < 1e-6
                compared += 1
    assert compared > 50


@pytest.mark.slow
def test_amp_trains_under_autocast_with_a_grad_scaler(synthetic_root):
    dataset = get_coco(synthetic_root, "train", get_transform(train=False))
    loader = torch.utils.data.DataLoader(_Repeat(dataset, [0, 1], 2), batch_size=2, collate_fn=utils.collate_fn)
    model = _model(dataset.num_classes)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    logger = train_one_epoch(model, optimizer, loader, torch.device("cpu"), epoch=1, print_freq=100, scaler=scaler)
    assert all(math.isfinite(v) for v in logger.meters["loss"].deque)
    assert not torch.equal(before, model.roi_heads.box_predictor.cls_score.weight)
    assert scaler.state_dict()["scale"] > 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_stop_signals_are_remembered_and_the_old_handlers_restored(signum):
    before = signal.getsignal(signum)
    with engine.catching_stop_signals() as stop:
        assert not stop.received
        os.kill(os.getpid(), signum)
        assert stop.received and stop.signum == signum
    assert signal.getsignal(signum) is before


def test_a_second_ctrl_c_stops_at_once_with_one_line_and_an_echo_does_not(monkeypatch, capsys):
    """torchrun passes a terminal's Ctrl-C on to its workers, which the terminal signalled already: a second SIGINT
    within SECOND_CTRL_C_AFTER seconds is that echo; a later one is the user's and ends the process."""
    clock = [100.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock[0])
    exits = []
    monkeypatch.setattr(engine.os, "_exit", exits.append)
    with engine.catching_stop_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT and not exits
        clock[0] += engine.SECOND_CTRL_C_AFTER / 2
        os.kill(os.getpid(), signal.SIGINT)
        assert not exits
        clock[0] += engine.SECOND_CTRL_C_AFTER
        os.kill(os.getpid(), signal.SIGTERM)  # another signal never counts as a second Ctrl-C
        assert not exits and stop.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [128 + signal.SIGINT]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "Received SIGINT: stopping after this iteration (Ctrl-C again to stop at once, without saving)"
    assert err[1:] == ["Second Ctrl-C: stopped at once, without saving; the last checkpoint is whole"]


class _RecordingEvaluator:
    """The smallest coco_eval.Evaluator: keeps which fields each image's output had, scores nothing."""

    def __init__(self, accepts_unpasted_masks: bool):
        self.accepts_unpasted_masks = accepts_unpasted_masks
        self.fields: dict[int, set[str]] = {}
        self.synchronized = 0
        self.metrics: dict[str, dict[str, float]] = {}

    def update(self, predictions: dict[int, dict]) -> None:
        self.fields.update({image_id: set(output) for image_id, output in predictions.items()})

    def synchronize_between_processes(self) -> None:
        self.synchronized += 1

    def summarize(self) -> dict[str, dict[str, float]]:
        self.metrics = {"count": {"images": float(len(self.fields))}}
        return self.metrics


@pytest.mark.parametrize("accepts_unpasted_masks", [False, True])
def test_evaluate_drives_any_evaluator_through_the_contract(synthetic_root, accepts_unpasted_masks):
    dataset = get_coco(synthetic_root, "val", get_transform(train=False))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, [0, 1]), batch_size=2, collate_fn=utils.collate_fn
    )
    model = _model(dataset.num_classes)
    evaluator = _RecordingEvaluator(accepts_unpasted_masks)
    assert evaluate(model, loader, torch.device("cpu"), evaluator=evaluator) is evaluator
    assert set(evaluator.fields) == set(dataset.ids[:2]) and evaluator.synchronized == 1
    masks = {"raw_masks", "image_size"} if accepts_unpasted_masks else {"masks"}
    assert all(fields == {"boxes", "labels", "scores"} | masks for fields in evaluator.fields.values())
    assert "postprocess" not in vars(model.transform)  # the model is as it was
    # The metrics.jsonl record reads the evaluator's numbers, whatever they are.
    assert evaluation_record(evaluator.metrics, epoch=1, global_iteration=8)["count"] == {"images": 2.0}


def test_coco_evaluator_fulfils_the_contract_and_its_metrics_name_pycocotools_numbers(synthetic_root):
    dataset = get_coco(synthetic_root, "val", get_transform(train=False))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [0, 1]), collate_fn=utils.collate_fn)
    named = [name for name in vars(Evaluator) if not name.startswith("_")] + list(Evaluator.__annotations__)
    assert sorted(named) == sorted(["accepts_unpasted_masks", "metrics", "update", "synchronize_between_processes",
                                    "summarize", "detections"])  # fmt: skip
    for name in ("update", "synchronize_between_processes", "summarize", "detections"):
        assert callable(getattr(CocoEvaluator, name))
    evaluator = evaluate(_model(dataset.num_classes), loader, torch.device("cpu"))
    assert isinstance(evaluator, CocoEvaluator) and evaluator.accepts_unpasted_masks
    assert set(evaluator.metrics) == {"bbox", "segm", "per_category"}
    for iou_type in ("bbox", "segm"):
        numbers = evaluator.metrics[iou_type]
        assert list(numbers.values()) == evaluator.coco_eval[iou_type].stats.tolist()
        assert list(numbers)[:3] == ["AP", "AP50", "AP75"]
        assert list(evaluator.metrics["per_category"][iou_type]) == ["disc", "square", "triangle", "bars"]

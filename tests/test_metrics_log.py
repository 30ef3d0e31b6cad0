"""metrics_log.py: metrics.jsonl (JSON lines that survive a kill) and TensorBoard, written by rank 0 only."""

import contextlib
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

import distributed
import metrics_log
import utils


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
    for i, _ in enumerate(
        logger.log_every(range(5), print_freq=2, start=0, on_print=lambda i, numbers: seen.append((i, numbers)))
    ):
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
    writer = metrics_log.JsonlWriter(path)
    assert not path.exists()  # opened at the first record
    records = [
        {"type": "train", "epoch": 0, "lr": 0.02, "losses": {"loss_a": 1.5}},
        {"type": "eval", "bbox": {"AP": 0.25}},
    ]
    for record in records:
        writer.write(record)
    writer.write({"type": "train", "grad_norm": float("inf"), "losses": {"loss_a": float("nan")}})
    writer.close()
    assert _lines(path) == [*records, {"type": "train", "grad_norm": None, "losses": {"loss_a": None}}]
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()  # strict JSON


def test_jsonl_writer_flushes_every_record_and_appends_to_an_earlier_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iteration": 0}\n')
    writer = metrics_log.JsonlWriter(path)
    writer.write({"type": "train", "iteration": 1})
    # Readable from another handle while the writer is still open: a kill -9 now would lose nothing.
    assert [r["iteration"] for r in _lines(path)] == [0, 1]
    writer.write({"type": "train", "iteration": 2})
    assert [r["iteration"] for r in _lines(path)] == [0, 1, 2]
    writer.close()


def test_jsonl_writer_starts_a_new_line_after_one_cut_off_by_a_killed_run(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "train", "iteration": 0}\n{"type": "tra')
    with contextlib.closing(metrics_log.JsonlWriter(path)) as writer:
        writer.write({"type": "train", "iteration": 1})
    lines = path.read_text().splitlines()
    assert lines[1] == '{"type": "tra' and json.loads(lines[2]) == {"type": "train", "iteration": 1}


def test_metrics_writer_writes_only_on_rank_0_and_only_with_an_output_dir(tmp_path, monkeypatch):
    with metrics_log.MetricsWriter(tmp_path) as metrics:
        metrics.write({"type": "train", "global_iteration": 0, "lr": 0.1})
    assert _lines(tmp_path / "metrics.jsonl") == [{"type": "train", "global_iteration": 0, "lr": 0.1}]
    with metrics_log.MetricsWriter(None) as metrics:
        metrics.write({"type": "train", "global_iteration": 1})
    monkeypatch.setattr(distributed, "get_rank", lambda: 1)
    with metrics_log.MetricsWriter(tmp_path / "rank1", tensorboard=True) as metrics:
        metrics.write({"type": "train", "global_iteration": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_tensorboard_is_unavailable_without_its_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package looks like to import
    assert not metrics_log.tensorboard_available()


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_gets_the_numbers_of_each_record_at_its_global_iteration(tmp_path):
    pytest.importorskip("tensorboard")
    train = {
        "type": "train",
        "epoch": 0,
        "iteration": 4,
        "global_iteration": 4,
        "lr": 0.25,
        "loss": 1.5,
        "losses": {"loss_a": 1.5},
    }
    evaluation = {
        "type": "eval",
        "epoch": 0,
        "global_iteration": 8,
        "bbox": {"AP": 0.5, "AP50": 0.75},
        "timestamp": 1.0,
    }
    with metrics_log.MetricsWriter(tmp_path, tensorboard=True) as metrics:
        assert metrics_log.tensorboard_available()
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
    with metrics_log.MetricsWriter(tmp_path, tensorboard=True) as killed:
        for step in range(6):
            killed.write({"type": "train", "global_iteration": step, "lr": float(step)})
    with metrics_log.MetricsWriter(tmp_path, tensorboard=True, first_step=3) as resumed:
        for step in range(3, 5):
            resumed.write({"type": "train", "global_iteration": step, "lr": 10.0 + step})
    assert _tensorboard_scalars(tmp_path / "tensorboard")["train/lr"] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 13.0),
        (4, 14.0),
    ]

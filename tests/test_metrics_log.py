"""metrics_log.py: metrics.jsonl (JSON lines that survive a kill) and TensorBoard, written by rank 0 only."""

import contextlib
import json
import sys
from pathlib import Path

import pytest

import distributed
import metrics_log


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

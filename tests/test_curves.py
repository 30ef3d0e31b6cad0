"""curves.py: reading metrics.jsonl (a resumed run's repeated iterations, cut-off lines), the PNGs it
draws, and one-line errors for a missing or unreadable file and a missing matplotlib."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import curves
import plots

C0, C1, C2 = (31, 119, 180), (255, 127, 14), (44, 160, 44)  # matplotlib's first three line colours
LOSS_TERMS = ("loss_classifier", "loss_mask")


def _train(epoch: int, iteration: int, loss: float, iters_per_epoch: int = 4) -> dict:
    terms = {"loss_classifier": loss * 0.75, "loss_mask": loss * 0.25}
    return {
        "type": "train",
        "epoch": epoch,
        "iteration": iteration,
        "global_iteration": epoch * iters_per_epoch + iteration,
        "lr": 0.01 * (epoch + 1),
        "loss": loss,
        "losses": terms,
        "iter_time": 0.5,
        "data_time": 0.01,
        "timestamp": 1000.0 + epoch * 10 + iteration,
    }


def _eval(epoch: int, ap: float) -> dict:
    numbers = {"AP": ap, "AP50": min(1.0, ap * 1.5), "AP75": ap * 0.8}
    return {
        "type": "eval",
        "epoch": epoch,
        "global_iteration": 4 * (epoch + 1),
        "bbox": numbers,
        "segm": {k: v * 0.9 for k, v in numbers.items()},
    }


def _write(path: Path, records: list, extra_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    for index, line in sorted((extra_lines or {}).items()):
        lines.insert(index, line)
    path.write_text("\n".join(lines) + "\n")
    return path


def _killed_and_resumed() -> list[dict]:
    """Two epochs of 4 iterations, --print-freq 2. The first run checkpoints after 2 iterations of epoch 1,
    logs iteration 2 (loss 9.0) and is killed; the resumed run logs iteration 2 again (loss 0.5)."""
    first_run = [
        _train(0, 0, 4.0),
        _train(0, 2, 3.0),
        _train(0, 3, 2.0),
        _eval(0, 0.2),
        _train(1, 0, 1.5),
        _train(1, 2, 9.0),
    ]
    resumed = [_train(1, 2, 0.5), _train(1, 3, 0.4), _eval(1, 0.5)]
    return first_run + resumed


def _positions(history: list[dict]) -> list[tuple]:
    return [(r["epoch"], r.get("iteration", "eval")) for r in history]


def test_a_resumed_runs_records_replace_what_the_killed_run_logged_again():
    history = plots.latest_history(_killed_and_resumed())
    assert _positions(history) == [(0, 0), (0, 2), (0, 3), (0, "eval"), (1, 0), (1, 2), (1, 3), (1, "eval")]
    assert [r["loss"] for r in history if r["type"] == "train"] == [4.0, 3.0, 2.0, 1.5, 0.5, 0.4]


def test_a_run_resumed_from_an_older_checkpoint_drops_everything_the_old_run_logged_after_it():
    old_run = [_train(0, 0, 4.0), _eval(0, 0.2), _train(1, 0, 3.0), _eval(1, 0.3), _train(2, 0, 2.0), _eval(2, 0.4)]
    from_model_0 = [_train(1, 0, 2.5), _eval(1, 0.35)]  # --resume model_0.pth: epoch 1 again, not yet epoch 2
    history = plots.latest_history(old_run + from_model_0)
    assert _positions(history) == [(0, 0), (0, "eval"), (1, 0), (1, "eval")]
    assert [r["bbox"]["AP"] for r in history if r["type"] == "eval"] == [0.2, 0.35]


def test_unreadable_lines_are_skipped_with_a_warning(tmp_path, capsys):
    path = _write(
        tmp_path / "metrics.jsonl", _killed_and_resumed(), {6: '{"type": "train", "epoch": 1, "itera', 8: "[1, 2]"}
    )
    records = plots.read_records(path)
    assert records == _killed_and_resumed()
    assert capsys.readouterr().err.strip() == f"warning: {path}: skipped 2 unreadable line(s) (line 7 first)"


def _run_cli(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = curves.cli(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        ("", "no metrics records in it"),
        ("epoch 0 loss 1.5\n\x00\xff binary junk\n", "no metrics records in it"),
        ('{"type": "train"}\n[1, 2]\n"text"\n{"type": "eval", "epoch": "one"}\n', "no metrics records in it"),
    ],
    ids=["missing", "empty", "not JSON", "JSON but not records"],
)
def test_a_missing_or_unreadable_metrics_file_is_one_error_line_and_status_2(tmp_path, capsys, content, problem):
    path = tmp_path / "metrics.jsonl"
    if content is not None:
        path.write_text(content)
    code, out, err = _run_cli(capsys, str(path))
    assert code == 2 and out == []
    assert len(err) == 1 and err[0].startswith(f"error: {path}: {problem}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else ["metrics.jsonl"])  # no PNG


def test_an_output_dir_without_metrics_names_the_file_it_looked_for(tmp_path, capsys):
    code, _, err = _run_cli(capsys, str(tmp_path))
    assert code == 2 and err == [
        f"error: {tmp_path / 'metrics.jsonl'}: no such file; pass a training run's --output-dir or its metrics.jsonl"
    ]


def test_without_matplotlib_it_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a missing package looks like to import
    _write(tmp_path / "metrics.jsonl", _killed_and_resumed())
    code, _, err = _run_cli(capsys, str(tmp_path))
    assert code == 2
    assert err == [
        "error: drawing figures needs matplotlib: pip install matplotlib (or pip install -r requirements-extras.txt)"
    ]
    assert not list(tmp_path.glob("*.png"))


def _pixels_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    return int((np.abs(pixels - colour).max(axis=2) <= tolerance).sum())


def _opened(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()  # decodes the whole PNG: a truncated file fails here
    return image


def test_curves_draw_losses_lr_and_ap_into_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "run").mkdir()
    _write(tmp_path / "run" / "metrics.jsonl", _killed_and_resumed())
    code, out, _ = _run_cli(capsys, str(tmp_path / "run" / "metrics.jsonl"), "--out", str(tmp_path / "plots"))
    assert code == 0
    assert out == [f"wrote {tmp_path / 'plots' / name}" for name in ("loss.png", "lr.png", "ap.png")]
    loss, lr, ap = (_opened(tmp_path / "plots" / name) for name in ("loss.png", "lr.png", "ap.png"))
    assert (loss.size, lr.size, ap.size) == ((800, 500), (800, 350), (1000, 400))  # ap: a bbox and a segm panel
    for image in (loss, lr, ap):
        assert _pixels_near(image, (255, 255, 255)) < image.width * image.height  # not blank
    assert _pixels_near(loss, (0, 0, 0), 10) > 500  # the total loss (black), axes and text
    assert _pixels_near(loss, C0) > 300 and _pixels_near(loss, C1) > 300  # one line per loss term
    assert _pixels_near(lr, C0) > 300
    assert min(_pixels_near(ap, colour) for colour in (C0, C1, C2)) > 100  # AP, AP50, AP75


def test_an_output_dir_argument_reads_its_metrics_and_writes_beside_them(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    # killed in epoch 0's evaluation
    _write(tmp_path / "metrics.jsonl", [r for r in _killed_and_resumed() if r["type"] == "train"])
    code, out, _ = _run_cli(capsys, str(tmp_path))
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["loss.png", "lr.png"]
    assert out[0] == f"{tmp_path / 'metrics.jsonl'}: no evaluation yet (it comes after each epoch): ap.png not written"

"""The benchmark scripts run end to end at tiny sizes, print their tables, and find ours equal to the
baseline (no timings are checked: speed is what the scripts report, not what tests assert)."""

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: its helpers sit beside it
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    return capsys.readouterr().out


def test_bench_masks_reports_identical_masks(monkeypatch, capsys):
    out = run_script("bench_masks.py", ["--images", "2", "--masks", "12", "--size", "60x80"], monkeypatch, capsys)
    assert "| case | baseline (ms) | ours (ms) | ratio | goal | met? |" in out
    assert "| 12 masks into 60x80: paste, threshold, RLE |" in out
    assert "60x80: 24 of 24 masks identical (0 pixels differ)" in out


@pytest.mark.slow
def test_bench_eval_reports_the_same_numbers(monkeypatch, capsys):
    out = run_script("bench_eval.py", ["--images", "3", "--detections", "12"], monkeypatch, capsys)
    assert "| whole way: raw outputs to 12 bbox + 12 segm numbers |" in out
    checks = [line for line in out.splitlines() if line.startswith("- ") and ":" in line and "AP" not in line]
    assert len(checks) == 6
    assert all(line.endswith("identical") or "equal to 1e-12" in line for line in checks), checks


@pytest.mark.slow
def test_bench_eval_vs_upstream_finds_the_same_numbers_on_both_paths(synthetic_root, tmp_path, monkeypatch, capsys):
    argv = ["--data-path", str(synthetic_root), "--checkpoint", str(tmp_path / "none.pth"), "--images", "2"]
    out = run_script("bench_eval_vs_upstream.py", [*argv, "--threads", "1", "--repeats", "1"], monkeypatch, capsys)
    rows = [line for line in out.splitlines() if line.startswith("| 1 | ")]
    assert [row.split(" | ")[1] for row in rows] == ["upstream", "ours", "upstream without its set_num_threads(1)"]
    assert all(float(value) > 0 for value in rows[1].split(" | ")[2:7])  # model, post, evaluator, data, total
    checks = [line for line in out.splitlines() if line.startswith("- ") and " pass " in line]
    assert len(checks) == 3 and all(line.endswith("identical") for line in checks), checks


@pytest.mark.slow
def test_bench_hardware_counts_flops_and_times_both_passes(monkeypatch, capsys):
    out = run_script("bench_hardware.py", ["--sizes", "demo", "--threads", "1", "--repeats", "1"], monkeypatch, capsys)
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| demo 128x96 |")]
    assert [row[1] for row in rows] == ["inference (forward)", "training (forward + backward)"]
    inference, training = (float(row[2]) for row in rows)
    assert 0 < inference < training  # the backward pass adds about twice the forward's FLOPs

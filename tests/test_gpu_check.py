"""benchmarks/gpu_check.py --dry-run: the device check runs end to end on the CPU at tiny sizes, so that it cannot rot
before a GPU runs it. Every section is in both reports; the CPU sections give real numbers (speeds above 0, finite
losses, a bit-for-bit resume under torchrun with gloo), the CUDA-only parts say they were skipped."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    "environment", "training throughput", "host-device syncs", "data loader", "evaluation", "torchrun exact resume",
    "fp16 AMP",
]  # fmt: skip


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[str, dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    markdown = (out / "gpu_check.md").read_text()
    report = json.loads((out / "gpu_check.json").read_text())
    return markdown, report, result.stdout


def _section(report: dict, name: str) -> dict:
    return next(s for s in report["sections"] if s["name"] == name)


def _ok(records: list[dict], **match) -> list[dict]:
    return [r for r in records if r.get("status", "ok") == "ok" and all(r.get(k) == v for k, v in match.items())]


@pytest.mark.slow
def test_the_dry_run_reports_every_section(dry_run):
    markdown, report, stdout = dry_run
    assert report["dry_run"] is True
    # In the order they run (the torchrun section's checkpoint is the one evaluation evaluates), not the shown one.
    assert [s["name"] for s in report["sections"]] == [
        "environment", "training throughput", "torchrun exact resume", "evaluation", "fp16 AMP", "host-device syncs",
        "data loader",
    ]  # fmt: skip
    for name in SECTIONS:
        assert f"\n## {name}\n" in markdown
    failed = {s["name"]: (s["error"] or s["log"])[-2000:] for s in report["sections"] if "failed" in s["status"]}
    assert not failed, failed
    assert markdown in stdout  # the table is printed too
    assert "| batch | precision | bare loop (images/s) | engine.train_one_epoch (images/s) | ours / bare" in markdown


@pytest.mark.slow
def test_the_cpu_sections_measure_and_the_cuda_parts_are_skipped(dry_run):
    markdown, report, _ = dry_run
    (fp32,) = _ok(_section(report, "training throughput")["records"], precision="fp32")
    assert fp32["bare_images_per_s"] > 0 and fp32["ours_images_per_s"] > 0 and fp32["ratio"] > 0
    assert fp32["loss_finite"] and math.isfinite(fp32["loss"])

    loaders = _ok(_section(report, "data loader")["records"])
    assert [r["workers"] for r in loaders] == [0, 2] and all(r["images_per_s"] > 0 for r in loaders)
    assert all(r["training_images_per_s"] == fp32["ours_images_per_s"] for r in loaders)

    evaluation = {r["metric"]: r for r in _section(report, "evaluation")["records"] if r.get("device") == "cpu"}
    assert evaluation["model_ms"]["value"] > 0 and evaluation["postprocess_ms"]["value"] > 0
    assert len(evaluation["ap"]["numbers"]) == 24 and all(-1 <= v <= 1 for v in evaluation["ap"]["numbers"].values())

    checks = {r["check"]: r for r in _section(report, "torchrun exact resume")["records"]}
    assert checks["deterministic_algorithms"]["ok"] and checks["uninterrupted"]["ok"]
    assert checks["sigterm"]["ok"] and checks["resumed"]["ok"]
    assert checks["losses_equal"]["ok"] and checks["losses_equal"]["after_resume"] >= 1
    assert checks["weights_equal"]["ok"] and checks["weights_equal"]["differing"] == 0  # bit for bit, gloo on the CPU

    (amp,) = _ok(_section(report, "fp16 AMP")["records"])
    assert amp["device"] == "cpu" and amp["finite"] and amp["iterations"] == 2

    # What needs CUDA says so, in the table and the records.
    assert _section(report, "host-device syncs")["status"] == "skipped (no CUDA)"
    skipped = [s["name"] for s in report["sections"] for r in s["records"] if r.get("status") == "skipped (no CUDA)"]
    assert set(skipped) == {"training throughput", "host-device syncs", "evaluation", "fp16 AMP"}
    assert markdown.count("skipped (no CUDA)") >= len(skipped)


@pytest.mark.slow  # torch's import: 5 s
def test_a_cuda_run_without_cuda_is_refused_at_once():
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", "/nonexistent/never-written", "--device", "cuda"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: --device cuda: no CUDA device here")

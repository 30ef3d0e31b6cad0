"""Printing for the benchmarks: what machine they ran on, and the markdown table of results."""

import datetime
import os
import platform
from importlib import metadata

import torch

THREADS_HELP = (
    "torch threads for baseline and ours alike (default 1: on a shared 2-core machine, a core taken by another "
    "process stalls every 2-thread operation, and timings become noise)"
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor() or "unknown CPU"


def machine(device: torch.device) -> str:
    """One line: date, CPU, cores and threads, the device, and the library versions that matter."""
    versions = []
    for package in ("torch", "torchvision", "pycocotools", "faster-coco-eval", "numpy"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{datetime.date.today().isoformat()}, {platform.machine()} {_cpu_model()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, device {device}{gpu}; {', '.join(versions)}"
    )


def table(rows: list[tuple[str, float, float, float | None]], unit: str) -> str:
    """Markdown rows: case | baseline | ours | ratio (baseline / ours) | goal | met?; a goal of 1 means faster, None none."""
    lines = [f"| case | baseline ({unit}) | ours ({unit}) | ratio | goal | met? |", "|---|---|---|---|---|---|"]
    for case, baseline, ours, goal in rows:
        ratio = baseline / ours
        if goal is None:
            goal_text, verdict = "—", "—"
        elif goal == 1:  # "faster"
            goal_text, verdict = "> 1x", "yes" if ratio > 1 else "NO"
        else:
            goal_text, verdict = f">= {goal:g}x", "yes" if ratio >= goal else "NO"
        lines.append(f"| {case} | {baseline:.4g} | {ours:.4g} | {ratio:.1f}x | {goal_text} | {verdict} |")
    return "\n".join(lines)

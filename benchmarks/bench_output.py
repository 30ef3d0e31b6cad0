"""Printing for the benchmarks: what machine they ran on, and the markdown table of results."""

import argparse
import datetime
import os
import platform
from collections.abc import Iterator
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
    """Markdown rows: case | baseline | ours | ratio (baseline / ours) | goal | met?; a goal of 1 means faster, None
    none."""
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


def parser(description: str, device_help: str) -> argparse.ArgumentParser:
    """The flags every benchmark here shares: --device, --seed, --threads."""
    result = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--device", default="cpu", help=device_help)
    result.add_argument("--seed", type=int, default=0)
    result.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    return result


def setup(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """Parse the flags, set torch's threads and print the machine line; returns the flags and the device."""
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"Machine: {machine(device)}")
    return args, device


def in_turns(names: list, repeats: int) -> Iterator[tuple[int, object]]:
    """(round, name) for `repeats` rounds over `names`, each round starting one name later: no path always runs
    first (after a cold start) or last (after the others' allocations)."""
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            yield r, name

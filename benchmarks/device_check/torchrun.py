"""The torchrun exact resume section: train.py under `torchrun --nproc_per_node=1` (NCCL; gloo in a dry run), one epoch;
a second run gets SIGTERM half-way and runs again with the same command (--auto-resume); every iteration's losses in
metrics.jsonl and the final weights are compared with the uninterrupted run's. With --use-deterministic-algorithms
where Mask R-CNN trains under it on the device; otherwise at lr 1e-30, where no weight moves and every loss must still
match bit for bit. Its checkpoint is the one the evaluation section evaluates."""

import contextlib
import json
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import checkpoint as ckpt
import metrics_log
import models
import processes
from device_check.frame import TINY_MODEL_KWARGS, Context, Section, sync

TRAIN_LINE = re.compile(r"Epoch: \[(\d+)\]\s+\[\s*(\d+)/(\d+)\]")


def _train_records(output: Path) -> dict[tuple[int, int], dict]:
    """metrics.jsonl's training records by (epoch, iteration); a resumed run's later record replaces the earlier."""
    records = {}
    for line in (output / metrics_log.METRICS_FILE).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if record.get("type") == "train":
                records[(record["epoch"], record["iteration"])] = record
    return records


def _deterministic_probe(ctx: Context) -> str | None:
    """Whether Mask R-CNN trains under torch.use_deterministic_algorithms(True) on this device: None, or the error."""
    if ctx.cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
    device = ctx.device
    model = models.build_model(models.ModelSpec(ctx.plan.model, 128, 160, model_kwargs=TINY_MODEL_KWARGS), 4).to(device)
    masks = torch.zeros(1, 128, 160, dtype=torch.uint8, device=device)
    masks[:, 20:100, 10:90] = 1
    boxes, labels = torch.tensor([[10.0, 20.0, 90.0, 100.0]], device=device), torch.tensor([1], device=device)
    torch.use_deterministic_algorithms(True)
    try:
        sum(
            model(
                [torch.rand(3, 128, 160, device=device)], [{"boxes": boxes, "labels": labels, "masks": masks}]
            ).values()
        ).backward()
        sync(device)
        return None
    except RuntimeError as e:
        return (str(e).strip().splitlines() or [""])[0][:300]
    finally:
        torch.use_deterministic_algorithms(False)


def _train_command(ctx: Context, output: Path, deterministic: bool) -> list[str]:
    plan = ctx.plan
    command = [sys.executable, *"-m torch.distributed.run --standalone --nproc_per_node=1".split(), *plan.train_script]
    # the backbone file where train.py looks by default (<data-path>/resnet50.pth), as the README's commands leave it
    command += [] if plan.backbone_file else ["--model", plan.model, "--weights-backbone", "none"]
    command += ["--data-path", str(ctx.data_root), "--output-dir", str(output),
                "--device", ctx.device.type, "-j", "0" if ctx.dry_run else "4"]  # fmt: skip
    command += "-b 2 --epochs 1 --print-freq 1 --seed 0 --auto-resume".split()
    # Without deterministic algorithms the weights cannot match bit for bit; an lr too small to move any weight
    # still compares the data order, the augmentations and the random states (CUDA's: the R-CNN samplers draw on it)
    # bit for bit, through every iteration's losses.
    command += "--use-deterministic-algorithms --lr 0.0025".split() if deterministic else ["--lr", "1e-30"]
    if plan.min_size:
        command += ["--min-size", str(plan.min_size), "--max-size", str(plan.max_size)]
    if plan.model_kwargs:
        command += ["--model-kwargs", *(f"{k}={v}" for k, v in plan.model_kwargs)]
    return command


def _weights_difference(a: Path, b: Path) -> tuple[int, float]:
    wa = torch.load(a, map_location="cpu", weights_only=True)["model"]
    wb = torch.load(b, map_location="cpu", weights_only=True)["model"]
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]
    largest = max(((wa[k].double() - wb[k].double()).abs().max().item() for k in differing), default=0.0)
    return len(differing), largest


def _launch(command: list[str], log: Path, env: dict, timeout: float, stop_when=None) -> processes.Launched:
    """train.py's run, its output in log.out and log.err; once stop_when(stdout so far) holds, SIGTERM to its process
    group (as SLURM or a terminal would). A run past `timeout` is killed, whole."""
    if stop_when is None:
        return processes.Launched(command, log, env).finish(timeout)
    return processes.run_until(command, stop_when, lambda p: p.signal_group(signal.SIGTERM), timeout, log, env)


@dataclass
class _Runs:
    """What the section's train.py runs share: their environment, folder and distributed backend."""

    env: dict
    folder: Path
    backend: str

    @classmethod
    def of(cls, ctx: Context) -> "_Runs":
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **ctx.plan.train_env}
        if ctx.threads is not None:
            env["OMP_NUM_THREADS"] = str(ctx.threads)
        if ctx.cuda:
            env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        folder = ctx.work / "torchrun"
        folder.mkdir(exist_ok=True)
        return cls(env, folder, "NCCL" if ctx.cuda else "gloo")


def section_torchrun(ctx: Context) -> Section:
    section = Section("torchrun exact resume", "check | result | expected | met?")
    problem = _deterministic_probe(ctx)
    section.add([f"Mask R-CNN trains under torch.use_deterministic_algorithms(True) on {ctx.device.type}",
                 problem or "yes", "yes", problem is None], check="deterministic_algorithms", ok=problem is None,
                error=problem)  # fmt: skip
    runs = _Runs.of(ctx)
    # 1. Uninterrupted; with deterministic algorithms where they work, else (or when the run fails with them) lr 1e-30.
    uninterrupted = _uninterrupted(ctx, section, runs, [True, False] if problem is None else [False])
    if uninterrupted is None:
        return section
    whole, deterministic, iterations = uninterrupted
    # 2. SIGTERM mid-epoch, then the same command again (--auto-resume), as a requeued job runs it.
    stopped = runs.folder / f"stopped_{_mode(deterministic)}"
    command = _train_command(ctx, stopped, deterministic)
    stop_iteration = _stop(ctx, section, runs, command, stopped, iterations)
    if stop_iteration is None or not _resume(ctx, section, runs, command, stopped, stop_iteration):
        return section
    # 3. The resumed run against the uninterrupted one.
    unlogged = _compare(section, whole, stopped, deterministic, iterations, stop_iteration)
    cublas = " (CUBLAS_WORKSPACE_CONFIG=:4096:8)" if ctx.cuda else ""
    how = (
        f"With --use-deterministic-algorithms{cublas} and lr 0.0025: the weights must match bit for bit."
        if deterministic
        else "Without deterministic algorithms (see above), at lr 1e-30: no weight moves, so every iteration's losses "
        "must still match bit for bit; the weights do not."
    )
    section.notes.append(
        f"train.py under torch.distributed.run --standalone --nproc_per_node=1 ({runs.backend}), batch 2, 1 epoch of "
        f"{iterations} iterations, --seed 0, --print-freq 1 (metrics.jsonl records every iteration's losses); the "
        f"second run gets SIGTERM once half the epoch is logged, then the same command line runs again. {how}"
    )
    if unlogged:
        section.notes.append(f"Not in the stopped run's metrics.jsonl (trained and saved, never logged): {unlogged}")
    return section


def _mode(deterministic: bool) -> str:
    return "deterministic" if deterministic else "lr_1e-30"


def _uninterrupted(ctx: Context, section: Section, runs: _Runs, modes: list[bool]) -> tuple[Path, bool, int] | None:
    """The uninterrupted run, in the first of `modes` (deterministic or not) that trains: its output folder, mode and
    iterations; None (the section failed) if none did."""
    for deterministic in modes:
        timeout = min(ctx.plan.run_timeout, max(ctx.remaining() / 3, 20))
        whole = runs.folder / f"uninterrupted_{_mode(deterministic)}"
        result = _launch(_train_command(ctx, whole, deterministic), whole, runs.env, timeout)
        stdout = result.stdout()
        lines = list(TRAIN_LINE.finditer(stdout))
        iterations = int(lines[-1].group(3)) if lines else 0
        ok = result.returncode == 0 and (whole / "model_0.pth").is_file()
        flags = "--use-deterministic-algorithms" if deterministic else "--lr 1e-30"
        section.add([f"torchrun --nproc_per_node=1 ({runs.backend}) {flags}: {iterations} iterations, evaluation",
                     f"exit {result.returncode}" + (" (timed out)" if result.timed_out else ""), "exit 0", ok],
                    check="uninterrupted", mode=_mode(deterministic), returncode=result.returncode,
                    iterations=iterations, ok=ok, log="" if ok else result.tail())  # fmt: skip
        if ok:
            break
    if not ok:
        section.status, section.log = "failed", result.tail()
        return None
    ctx.results["checkpoint"] = str(whole / "model_0.pth")
    tables = stdout.count("IoU metric: bbox")
    init_line = f"world size 1, {runs.backend.lower()})" in stdout
    section.add([f"its distributed init line ({runs.backend}) and AP tables", f"{tables} table(s)", "1",
                 tables == 1 and init_line], check="ap_table", tables=tables, init_line=init_line)  # fmt: skip
    return whole, deterministic, iterations


def _stop(
    ctx: Context, section: Section, runs: _Runs, command: list[str], stopped: Path, iterations: int
) -> int | None:
    """The run that gets SIGTERM half-way: the iteration its mid-epoch checkpoint was saved after (None: failed)."""
    half = max(iterations // 2, 1)

    def at_half(text: str) -> bool:
        return any(int(m.group(2)) >= half - 1 for m in TRAIN_LINE.finditer(text))

    timeout = min(ctx.plan.run_timeout, max(ctx.remaining() / 2, 20))
    result = _launch(command, stopped, runs.env, timeout, stop_when=at_half)
    saved = stopped / ckpt.CHECKPOINT_FILE
    state = torch.load(saved, map_location="cpu", weights_only=True) if saved.is_file() else None
    train_state = (state or {}).get("train_state") or {}
    stop_iteration = train_state.get("iteration")
    stop_ok = result.returncode != 0 and "Stopped by SIGTERM" in result.stdout() and stop_iteration is not None
    stop_ok = stop_ok and 0 < stop_iteration < iterations
    section.add(["SIGTERM to the launcher's process group mid-epoch: a mid-epoch checkpoint",
                 f"exit {result.returncode}, saved after iteration {stop_iteration}",
                 f"exit != 0, 0 < iteration < {iterations}", stop_ok],
                check="sigterm", returncode=result.returncode, stop_iteration=stop_iteration, ok=stop_ok)  # fmt: skip
    if ctx.cuda:
        cuda_states = len(train_state["rng"][0]["cuda"]) if train_state.get("rng") else 0
        section.add(["CUDA random states in the checkpoint", cuda_states, ">= 1", cuda_states >= 1],
                    check="cuda_rng_saved", count=cuda_states)  # fmt: skip
    if not stop_ok:
        section.status, section.log = "failed", result.tail()
        return None
    return stop_iteration


def _resume(
    ctx: Context, section: Section, runs: _Runs, command: list[str], stopped: Path, stop_iteration: int
) -> bool:
    """The same command again: --auto-resume goes on with the next batch, to the end (False: it did not)."""
    timeout = min(ctx.plan.run_timeout, max(ctx.remaining() - 5, 20))
    result = _launch(command, stopped.with_name(stopped.name + "_resumed"), runs.env, timeout)
    stdout = result.stdout()
    first_logged = min((int(m.group(2)) for m in TRAIN_LINE.finditer(stdout)), default=None)
    resumed_ok = result.returncode == 0 and "Auto-resuming from" in stdout and first_logged == stop_iteration
    got, wanted = (
        f"exit {result.returncode}, first iteration {first_logged}",
        f"exit 0, first iteration {stop_iteration}",
    )
    section.add(["the same command again: --auto-resume goes on with the next batch", got, wanted, resumed_ok],
                check="resumed", returncode=result.returncode, first_iteration=first_logged, ok=resumed_ok)  # fmt: skip
    if not resumed_ok:
        section.status, section.log = "failed", result.tail()
    return resumed_ok


def _compare(
    section: Section, whole: Path, stopped: Path, deterministic: bool, iterations: int, stop_iteration: int
) -> list:
    """Every iteration's losses and the final weights, stopped + resumed against uninterrupted; returns the
    iterations the stopped run trained but never logged."""
    a, b = _train_records(whole), _train_records(stopped)
    same = [k for k in b if k in a and (a[k]["loss"], a[k]["losses"]) == (b[k]["loss"], b[k]["losses"])]
    after = [k for k in b if k[1] >= stop_iteration]
    # The iteration during which SIGTERM arrived is trained and saved, but train_one_epoch raises TrainingStopped
    # before log_every prints it: metrics.jsonl has no record of it.
    unlogged = sorted(set(a) - set(b))
    losses_ok = len(same) == len(b) and len(after) == iterations - stop_iteration and len(unlogged) <= 1
    section.add(
        [
            f"each iteration's losses in metrics.jsonl, stopped + resumed run vs uninterrupted ({len(after)} "
            "after the resume)",
            f"{len(same)} of {len(b)} identical",
            "all",
            losses_ok,
        ],
        check="losses_equal",
        identical=len(same),
        logged=len(b),
        after_resume=len(after),
        unlogged=unlogged,
        ok=losses_ok,
    )
    differing, largest = _weights_difference(whole / "model_0.pth", stopped / "model_0.pth")
    expected, weights_ok = ("0 (bit for bit)", differing == 0) if deterministic else ("information (lr 1e-30)", None)
    section.add(
        [
            "final weights, resumed vs uninterrupted",
            f"{differing} tensors differ (largest {largest:.3g})",
            expected,
            weights_ok,
        ],
        check="weights_equal",
        differing=differing,
        largest=largest,
        ok=weights_ok,
    )
    return unlogged

"""The training throughput section: images/s and peak memory of engine.train_one_epoch beside a bare
forward/backward/step loop over the same in-memory batches, per batch size and precision. Goal: ours at most 5%
slower."""

import math
import statistics

from coco_utils import get_coco
from device_check.frame import SKIPPED_NO_CUDA, Context, Section, failure, free_memory, time_call
from device_check.trainer import Trainer, build_model, landscape_batches, peak_mib, reset_peak
from transforms import get_transform


def _throughput(ctx: Context, initial, dataset, batch_size: int, amp: bool, budget: float) -> dict:
    plan, device = ctx.plan, ctx.device
    batches = landscape_batches(dataset, batch_size, plan.warmup + plan.max_iterations, pin=ctx.cuda)
    warm, timed = batches[: plan.warmup], batches[plan.warmup :]
    bare, ours = Trainer(initial, device, batch_size, amp), Trainer(initial, device, batch_size, amp)
    first, _ = time_call(lambda: bare.bare(warm[:1]), device)  # allocations, cuDNN's choices: not counted
    rest, _ = time_call(lambda: bare.bare(warm[1:]), device)
    per_iteration = rest / (len(warm) - 1) if len(warm) > 1 else first
    time_call(lambda: ours.ours(warm), device)
    left = budget - first - rest - per_iteration * len(warm)
    iterations = max(2, min(plan.max_iterations, int(left / max(2 * plan.repeats * per_iteration, 1e-6))))
    timed = timed[:iterations]
    bare_times, ours_times, bare_peak, ours_peak, losses = [], [], [], [], []
    for _ in range(plan.repeats):  # alternating, so that drift hits both alike
        reset_peak(device)
        bare_times.append(time_call(lambda: bare.bare(timed), device)[0])
        bare_peak.append(peak_mib(device))
        reset_peak(device)
        seconds, logger = time_call(lambda: ours.ours(timed), device)
        ours_times.append(seconds)
        ours_peak.append(peak_mib(device))
        losses.append(logger.meters["loss"].global_avg)
    bare_s, ours_s = statistics.median(bare_times), statistics.median(ours_times)
    return {
        "iterations": iterations, "warmup": plan.warmup, "repeats": plan.repeats,
        "bare_s_per_it": bare_s / iterations, "ours_s_per_it": ours_s / iterations,
        "bare_images_per_s": batch_size * iterations / bare_s, "ours_images_per_s": batch_size * iterations / ours_s,
        "ratio": ours_s / bare_s,
        "bare_peak_mib": None if bare_peak[0] is None else max(bare_peak),
        "ours_peak_mib": None if ours_peak[0] is None else max(ours_peak),
        "loss": losses[-1], "loss_finite": all(math.isfinite(v) for v in losses),
    }  # fmt: skip


def section_training_throughput(ctx: Context) -> Section:
    plan = ctx.plan
    section = Section(
        "training throughput",
        "batch | precision | bare loop (images/s) | engine.train_one_epoch (images/s) | ours / bare (time) | goal "
        "| met? | peak memory bare / ours (MiB) | loss finite",
    )
    dataset = get_coco(ctx.data_root, "train", get_transform(True), with_masks=True)
    initial = build_model(ctx, plan.num_classes)
    configs = [(b, p) for p in ("fp32", "amp") for b in plan.batch_sizes]
    left = sum(1 for _, p in configs if p == "fp32" or ctx.cuda)  # configurations still to run
    ctx.results["train_images_per_s"] = {}
    for batch_size, precision in configs:
        key = {"batch": batch_size, "precision": precision}
        if precision == "amp" and not ctx.cuda:
            section.add([batch_size, precision, SKIPPED_NO_CUDA], status=SKIPPED_NO_CUDA, **key)
            continue
        budget = min(plan.config_seconds, max(ctx.remaining() - 5, 0) / max(left, 1))
        left -= 1
        if budget < 3:
            section.add([batch_size, precision, "skipped (time budget)"], status="skipped (time budget)", **key)
            continue
        try:
            r = _throughput(ctx, initial, dataset, batch_size, precision == "amp", budget)
        except Exception as e:  # noqa: BLE001 - one configuration (an out-of-memory batch 8) does not lose the rest
            section.add([batch_size, precision, failure(e)], status=failure(e), **key)
            continue
        finally:
            free_memory()
        ctx.results["train_images_per_s"][(batch_size, precision)] = r["ours_images_per_s"]
        peaks = "n/a (CPU)" if r["bare_peak_mib"] is None else f"{r['bare_peak_mib']:.0f} / {r['ours_peak_mib']:.0f}"
        cells = [batch_size, precision, r["bare_images_per_s"], r["ours_images_per_s"], f"{r['ratio']:.3f}"]
        section.add(cells + ["<= 1.05", r["ratio"] <= 1.05, peaks, r["loss_finite"]], status="ok", **key, **r)
    size = "x".join(map(str, plan.image_size))
    resize = f"{plan.min_size}/{plan.max_size}" if plan.min_size else "800/1333 (the model's)"
    section.notes.append(
        f"{plan.model}, {plan.num_classes} classes, synthetic {size} images resized by the model to {resize}, one "
        f"aspect-ratio group, in memory (pinned on a GPU); SGD at the reference's lr for the batch. Per row: "
        f"{plan.warmup} warm-up iteration(s) per loop (not timed), then {plan.repeats} timed run(s) of each loop, "
        "alternating; the median. Both loops copy uint8 images to the device and scale them there."
    )
    return section

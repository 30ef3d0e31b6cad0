"""The host-device syncs section: synchronizing operations per training iteration, ours against the bare loop
(torch.cuda.set_sync_debug_mode, and the profiler's cuda*Synchronize calls and device-to-host copies)."""

import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from coco_utils import get_coco
from device_check.frame import SKIPPED_NO_CUDA, Context, Section, failure, free_memory
from device_check.trainer import Trainer, build_model, landscape_batches
from transforms import get_transform

SYNC_WARNING = "synchronizing CUDA operation"


def _count_sync_warnings(run: Callable[[], Any]) -> Counter:
    """Synchronizing CUDA operations during run(), by the Python line that issued them."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))


PROFILER_SYNCS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize")


def _profiler_counts(run: Callable[[], Any]) -> dict[str, int]:
    """The profiler's count of synchronizing CUDA runtime calls and of device-to-host copies during run()."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()  # one cudaDeviceSynchronize, taken off below
    counts = {event.key: event.count for event in prof.key_averages()}
    return {
        "stream_syncs": max(sum(counts.get(name, 0) for name in PROFILER_SYNCS) - 1, 0),
        "memcpy_dtoh": sum(n for name, n in counts.items() if name.startswith("Memcpy DtoH")),
    }


def section_syncs(ctx: Context) -> Section:
    section = Section(
        "host-device syncs",
        "loop | synchronizing ops / iteration (set_sync_debug_mode) | cuda*Synchronize / iteration (profiler) "
        "| Memcpy DtoH / iteration (profiler)",
    )
    if not ctx.cuda:
        for loop in ("bare loop", "engine.train_one_epoch"):
            section.add([loop, SKIPPED_NO_CUDA], loop=loop, status=SKIPPED_NO_CUDA)
        section.status = SKIPPED_NO_CUDA
        return section
    n = ctx.plan.sync_iterations
    dataset = get_coco(ctx.data_root, "train", get_transform(True), with_masks=True)
    initial = build_model(ctx, ctx.plan.num_classes)
    batches = landscape_batches(dataset, 2, 2 + 2 * n, pin=True)
    counted = {}
    for loop in ("bare", "ours"):
        trainer = Trainer(initial, ctx.device, 2, amp=False)
        step = trainer.bare if loop == "bare" else trainer.ours
        step(batches[:2])  # warm-up
        record: dict[str, Any] = {"loop": loop, "iterations": n, "status": "ok"}
        try:
            locations = _count_sync_warnings(lambda step=step: step(batches[2 : 2 + n]))
            record |= {"sync_debug_per_it": sum(locations.values()) / n, "locations": dict(locations.most_common())}
            counted[loop] = locations
        except Exception as e:  # noqa: BLE001 - the profiler's counts may still come
            record["sync_debug_per_it"] = failure(e)
        try:
            counts = _profiler_counts(lambda step=step: step(batches[2 + n : 2 + 2 * n]))
            record |= {
                "stream_syncs_per_it": counts["stream_syncs"] / n,
                "memcpy_dtoh_per_it": counts["memcpy_dtoh"] / n,
            }
        except Exception as e:  # noqa: BLE001
            record["stream_syncs_per_it"] = record["memcpy_dtoh_per_it"] = failure(e)
        name = "bare loop (forward, backward, step)" if loop == "bare" else "engine.train_one_epoch"
        cells = [name, record["sync_debug_per_it"], record["stream_syncs_per_it"], record["memcpy_dtoh_per_it"]]
        section.add(cells, **record)
        del trainer, step
        free_memory()
    if len(counted) == 2:
        extra = ", ".join(f"{where} x{count}" for where, count in (counted["ours"] - counted["bare"]).most_common(8))
        section.notes.append(f"What ours synchronizes beyond the bare loop in {n} iterations: {extra or 'nothing'}")
    section.notes.append(
        f"Batch 2, fp32, {n} iterations per count after 2 warm-up iterations. The model itself synchronizes too "
        "(torchvision's samplers and box coding); the difference between the rows is what engine.py adds."
    )
    return section

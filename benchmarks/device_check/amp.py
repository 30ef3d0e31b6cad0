"""The fp16 AMP section: iterations of engine.train_one_epoch under autocast and a GradScaler: every loss finite, few
steps skipped."""

import math
import statistics

from coco_utils import get_coco
from device_check.frame import SKIPPED_NO_CUDA, Context, Section, failure, free_memory
from device_check.trainer import Trainer, build_model, landscape_batches
from transforms import get_transform


def section_amp(ctx: Context) -> Section:
    plan = ctx.plan
    section = Section(
        "fp16 AMP",
        "run | iterations | loss, first 10 / last 10 (mean) | all finite | steps skipped by GradScaler | goal | met? "
        "| final scale",
    )
    cases = [("fp16 autocast + GradScaler on CUDA", ctx.device)]
    if not ctx.cuda:
        section.add([cases[0][0], SKIPPED_NO_CUDA], status=SKIPPED_NO_CUDA, device="cuda")
        # The same code on the CPU (bfloat16 autocast), so that the section cannot rot before a GPU runs it.
        cases = [("bfloat16 autocast + GradScaler on the CPU (the code path only)", ctx.device)]
    dataset = get_coco(ctx.data_root, "train", get_transform(True), with_masks=True)
    initial = build_model(ctx, plan.num_classes)
    for name, device in cases:
        try:
            trainer = Trainer(initial, device, 2, amp=True)
            batches = landscape_batches(dataset, 2, plan.amp_iterations, pin=device.type == "cuda")
            scales, records = [trainer.scaler.get_scale()], []

            def after_step(done: int, trainer=trainer, scales=scales) -> None:
                scales.append(trainer.scaler.get_scale())  # halved after a step skipped for inf/NaN gradients

            trainer.ours(batches, print_freq=1, after_step=after_step, write_metrics=records.append)
            losses = [r["loss"] for r in records]
            skipped = sum(later < earlier for earlier, later in zip(scales, scales[1:]))
            finite = all(math.isfinite(v) for v in losses)
            first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
            goal = max(5, plan.amp_iterations // 20)
            cells = [name, len(losses), f"{first:.4g} / {last:.4g}", finite, skipped, f"<= {goal}"]
            section.add(
                cells + [finite and skipped <= goal, scales[-1]],
                status="ok",
                device=device.type,
                iterations=len(losses),
                losses=losses,
                skipped=skipped,
                finite=finite,
                final_scale=scales[-1],
            )
            del trainer
        except Exception as e:  # noqa: BLE001 - a non-finite loss stops train_one_epoch: that is a finding too
            section.add([name, failure(e)], status=failure(e), device=device.type)
        free_memory()
    section.notes.append(
        f"engine.train_one_epoch with a GradScaler (what --amp does) for {plan.amp_iterations} iterations, batch 2, "
        "SGD lr 0.0025 with the warm-up of epoch 0; a skipped step is one after which the scale went down. "
        "A non-finite loss would stop the loop (NonFiniteLossError) and show as a failure."
    )
    return section

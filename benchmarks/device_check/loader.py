"""The data loader section: samplers.build_data_loaders alone (decode, targets, flip, batches) at a few worker
counts, against the training images/s."""

import argparse
import time

from coco_utils import get_coco
from device_check.frame import Context, Section, failure
from samplers import build_data_loaders
from transforms import get_transform


def _loader_images_per_s(ctx: Context, dataset_train, dataset_val, workers: int, seconds: float) -> dict:
    args = argparse.Namespace(workers=workers, batch_size=2, aspect_ratio_group_factor=3, use_copypaste=False)
    train_sampler, batch_sampler, loader, _ = build_data_loaders(args, dataset_train, dataset_val, ctx.device, 0)
    train_sampler.set_epoch(0)
    batch_sampler.set_position(0, 0)
    skip = max(2, 2 * workers)  # start-up and the first prefetch: not counted
    images, start, batches = 0, None, iter(loader)
    try:
        for i, (batch_images, _) in enumerate(batches):
            if i == skip - 1:
                start = time.perf_counter()
            elif i >= skip:
                images += len(batch_images)
                if time.perf_counter() - start > seconds:
                    break
        elapsed = time.perf_counter() - start if start is not None else 0.0
    finally:
        del batches  # shuts the workers down
    if not images:
        raise RuntimeError(f"the loader gave no batches beyond the first {skip}; make its dataset larger")
    return {"images": images, "seconds": elapsed, "images_per_s": images / elapsed}


def section_data_loader(ctx: Context) -> Section:
    plan = ctx.plan
    section = Section(
        "data loader",
        "loader | loader only (images/s) | training, batch 2 fp32 (images/s) | loader / training | goal | met? "
        "| loader / fastest training",
    )
    dataset_train = get_coco(ctx.loader_root, "train", get_transform(True), with_masks=True)
    dataset_val = get_coco(ctx.loader_root, "val", get_transform(False), with_masks=False)
    trained = ctx.results.get("train_images_per_s", {})
    train_b2, fastest = trained.get((2, "fp32")), max(trained.values(), default=None)
    for workers in plan.workers:
        name = f"-j {workers}, batch 2"
        try:
            r = _loader_images_per_s(ctx, dataset_train, dataset_val, workers, plan.loader_seconds)
        except Exception as e:  # noqa: BLE001
            section.add([name, failure(e)], workers=workers, status=failure(e))
            continue
        ratio = r["images_per_s"] / train_b2 if train_b2 else None
        to_fastest = f"{r['images_per_s'] / fastest:.2f}" if fastest else ""
        cells = [name, r["images_per_s"], train_b2 or "not measured"]
        cells += [None, "", ""] if ratio is None else [f"{ratio:.2f}", ">= 1", ratio >= 1]
        section.add(cells + [to_fastest], workers=workers, status="ok", training_images_per_s=train_b2, ratio=ratio,
                    fastest_training_images_per_s=fastest, **r)  # fmt: skip
    section.notes.append(
        f"samplers.build_data_loaders as train.py builds it (aspect-ratio grouped, seeded, pinned on a GPU) over "
        f"{len(dataset_train)} training images ({plan.loader_distinct} distinct JPEGs, each listed "
        f"{plan.loader_repeat} times: read from the page cache): decode, masks, flip, batches of 2. The first "
        f"max(2, 2 x workers) batches (start-up, prefetch) are not counted, then at most {plan.loader_seconds:g} s. "
        "Training images/s: the training throughput section's engine.train_one_epoch."
    )
    return section

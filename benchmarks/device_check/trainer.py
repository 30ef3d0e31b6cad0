"""What the training sections share: the model as train.py builds it, batches in memory, and a `Trainer` that runs
the bare loop or engine.train_one_epoch over them."""

import argparse
import contextlib
import copy
import io

import torch

import models
import utils
from device_check.frame import Context
from engine import StopSignal, train_one_epoch


def landscape_batches(dataset, batch_size: int, count: int, pin: bool) -> list[tuple[tuple, tuple]]:
    """`count` batches of the dataset's landscape images (one aspect-ratio group, as train.py batches them), cycling
    over them; with the training transforms (a random flip), in memory, pinned for a GPU."""
    samples = []
    for index in range(len(dataset)):
        info = dataset.image_info(index)
        if info["width"] <= info["height"]:
            continue
        image, target = dataset[index]
        if pin:
            image = image.pin_memory()
            target = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        samples.append((image, target))
    return [
        utils.collate_fn([samples[(b * batch_size + i) % len(samples)] for i in range(batch_size)])
        for b in range(count)
    ]


def build_model(ctx: Context, num_classes: int) -> torch.nn.Module:
    """The model as train.py builds it from a backbone file, or the dry run's without one (frozen BatchNorm, 3
    trainable stages)."""
    backbone = str(ctx.backbone_path) if ctx.backbone_path else "none"
    args = argparse.Namespace(model=ctx.plan.model, weights_backbone=backbone, weights=None, test_only=False, resume="")
    plan = ctx.plan
    spec = models.ModelSpec(plan.model, plan.min_size, plan.max_size, model_kwargs=list(plan.model_kwargs))
    torch.manual_seed(0)
    return models.build_model(spec, num_classes, backbone=models.load_backbone(args))


class Trainer:
    """A model, its SGD optimizer (the reference's lr for this batch) and, for --amp, a GradScaler, on the device."""

    def __init__(self, initial: torch.nn.Module, device: torch.device, batch_size: int, amp: bool):
        self.device = device
        self.model = copy.deepcopy(initial).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.02 * batch_size / 16, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type) if amp else None

    def bare(self, batches) -> None:
        """The bare loop: to the device, forward, backward, step; nothing else."""
        self.model.train()
        for images, targets in batches:
            images = [image.to(self.device, non_blocking=True).float().div_(255) for image in images]
            targets = [
                {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                for t in targets
            ]
            with torch.autocast(device_type=self.device.type, enabled=self.scaler is not None):
                loss_dict = self.model(images, targets)
                loss = sum(loss_dict.values())
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()

    def ours(self, batches, **options) -> utils.MetricLogger:
        """engine.train_one_epoch over the same batches (its log lines go to a buffer)."""
        options = {"print_freq": 10**9, "stop": StopSignal()} | options
        with contextlib.redirect_stdout(io.StringIO()):
            return train_one_epoch(self.model, self.optimizer, batches, self.device, 0, scaler=self.scaler, **options)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

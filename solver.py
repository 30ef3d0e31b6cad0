"""The optimizer and the learning-rate schedule: the reference's warm-up and epoch scheduler, built together.

    optimizer = build_optimizer(model, args, scaled_lr(args, world_size))
    lr_scheduler = build_lr_scheduler(optimizer, args, iters_per_epoch)
    lr_scheduler.set_iteration(epoch, iteration)   # before each step (train_one_epoch does it)
    lr_scheduler.step()                            # after each epoch

The lr at an iteration is a function of (epoch, iteration) alone, so a run resumed in the middle
of an epoch, even in the middle of the warm-up, sets exactly the lr the uninterrupted run had.
"""

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch

from errors import UsageError

DEFAULT_LR = 0.02  # the reference's, for REFERENCE_BATCH images per step
REFERENCE_BATCH = 16
WARMUP_FACTOR = 1.0 / 1000
WARMUP_MAX_ITERS = 1000
NORM_TYPES = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm)


def _parameter_groups(model: torch.nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict]:
    """Trainable parameters, with normalization layers' ones in their own group when --norm-weight-decay is set."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    norm, other = [], []
    for module in model.modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        (norm if isinstance(module, NORM_TYPES) else other).extend(params)
    return [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": norm_weight_decay}]


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace, lr: float | None = None) -> torch.optim.Optimizer:
    """--opt sgd, sgd_nesterov or adamw at `lr` (default --lr; see scaled_lr), with --wd (and --norm-weight-decay for
    normalization layers)."""
    lr = args.lr if lr is None else lr
    groups = _parameter_groups(model, args.weight_decay, args.norm_weight_decay)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=args.opt == "sgd_nesterov")


def scaled_lr(args: argparse.Namespace, world_size: int) -> float:
    """The lr a new run starts from. --auto-scale-lr: --lr is for 16 images per step, scaled linearly to this run's
    total batch. Without it, --lr as given, and a one-line suggestion where a default --lr meets another total batch.
    The flags record --lr as typed; the optimizer's state holds the lr in use."""
    total = args.batch_size * world_size
    scaled = args.lr * total / REFERENCE_BATCH
    if args.auto_scale_lr:
        print(f"--auto-scale-lr: lr {args.lr:g} x {total} images per step / {REFERENCE_BATCH} = {scaled:g}")
        return scaled
    if args.lr == DEFAULT_LR and total != REFERENCE_BATCH:
        print(
            f"Note: --lr {args.lr:g} is for {REFERENCE_BATCH} images per step and this run takes {total} "
            f"({args.batch_size} x {world_size} processes); --auto-scale-lr would use {scaled:g}"
        )
    return args.lr


class LinearWarmup:
    """The reference's warm-up: the lr rises linearly from lr/1000 to lr over the first
    min(1000, iterations - 1) iterations of epoch 0.

    Computed from the iteration alone (the reference steps a LinearLR), so a run resumed in the
    middle of the warm-up sets exactly the lr the uninterrupted run had.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, iters_per_epoch: int):
        self.optimizer = optimizer
        self.iters = min(WARMUP_MAX_ITERS, iters_per_epoch - 1)
        # The lr the epoch scheduler started from; a resumed optimizer's "lr" holds a warmed-up value.
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]

    def factor(self, iteration: int) -> float:
        if iteration >= self.iters:
            return 1.0
        progress = iteration / self.iters
        return WARMUP_FACTOR * (1 - progress) + progress

    def set_lr(self, iteration: int) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * self.factor(iteration)


class WarmupLRScheduler:
    """The whole schedule: the warm-up over epoch 0's first iterations, then an epoch scheduler (MultiStepLR
    or CosineAnnealingLR; None: the warm-up alone) stepped once per epoch. Its state_dict is the epoch
    scheduler's, as the reference's checkpoints hold it (their "lr_scheduler")."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        iters_per_epoch: int,
        epoch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ):
        self.optimizer = optimizer
        self.iters_per_epoch = iters_per_epoch
        self.epoch_scheduler = epoch_scheduler
        self._warmup: LinearWarmup | None = None
        self._resumed = False

    def set_iteration(self, epoch: int, iteration: int) -> None:
        """Set the lr of iteration `iteration` (0-based) of `epoch`: warming up in epoch 0; elsewhere the
        epoch scheduler's lr stands."""
        if epoch != 0:
            return
        if self._warmup is None:  # from the lrs the optimizer holds once a checkpoint is loaded into it
            self._warmup = LinearWarmup(self.optimizer, self.iters_per_epoch)
        self._warmup.set_lr(iteration)

    def step(self) -> None:
        """The end of an epoch."""
        if self.epoch_scheduler is None:
            return
        with warnings.catch_warnings():
            if self._resumed:
                # A run resumed after an epoch's last iteration (stopped there) steps its scheduler before this process
                # steps the optimizer, which torch takes for the old call order; the optimizer did step, before.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.epoch_scheduler.step()

    def state_dict(self) -> dict:
        return {} if self.epoch_scheduler is None else self.epoch_scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.epoch_scheduler is not None:
            self.epoch_scheduler.load_state_dict(state)
            self._resumed = True


def _multistep(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.lr_steps, gamma=args.lr_gamma)


def _cosine(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)


# --lr-scheduler's choices: name -> (optimizer, flags) -> the epoch scheduler, stepped once per epoch after the warm-up.
# A new schedule is one entry here (its flags, if any, in flags.py).
EPOCH_SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, argparse.Namespace], Any]] = {
    "multisteplr": _multistep,  # at --lr-steps, by --lr-gamma
    "cosineannealinglr": _cosine,  # over --epochs
}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, args: argparse.Namespace, iters_per_epoch: int
) -> WarmupLRScheduler:
    """--lr-scheduler (one of EPOCH_SCHEDULERS) after the reference's warm-up; an unknown name is a UsageError."""
    make = EPOCH_SCHEDULERS.get(args.lr_scheduler)
    if make is None:
        raise UsageError(
            f"--lr-scheduler: unknown scheduler {args.lr_scheduler!r}; choose one of {', '.join(EPOCH_SCHEDULERS)}"
        )
    return WarmupLRScheduler(optimizer, iters_per_epoch, make(optimizer, args))

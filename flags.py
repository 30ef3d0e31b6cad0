"""train.py's flags beyond parsing them: checking their values before any work, and what they imply.

Every check gives one line naming the flag and what to do (a UsageError: exit status 2), so that a
wrong value stops the run at once instead of failing deep inside it with a traceback.
"""

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import torchvision

import coco_eval
import utils
from transforms import copypaste_allowed

# Builder arguments that train.py sets itself.
RESERVED_MODEL_KWARGS = {"num_classes", "num_keypoints", "weights", "weights_backbone"}


def validate(args: argparse.Namespace) -> None:
    """Catch flag values that would otherwise fail deep inside a run, with a traceback."""
    detection_models = torchvision.models.list_models(module=torchvision.models.detection)
    if args.model not in detection_models:
        choices = ", ".join(sorted(detection_models))
        raise utils.UsageError(f"--model: unknown model {args.model!r}; choose one of {choices}")
    if args.model.startswith("keypointrcnn") and args.dataset != "coco_kp":
        raise utils.UsageError(f"--model: {args.model} needs keypoint annotations; add --dataset coco_kp")
    _validate_own_data(args)
    reserved = sorted(set(dict(args.model_kwargs)) & RESERVED_MODEL_KWARGS)
    if reserved:
        raise utils.UsageError(
            f"--model-kwargs: {reserved[0]} is not a model argument here: the classes and keypoints come from the "
            "dataset (see --label-mapping), weights from --weights and --weights-backbone"
        )
    lowest = {
        "-b/--batch-size": (args.batch_size, 1),
        "--epochs": (args.epochs, 1),
        "--print-freq": (args.print_freq, 1),
        "-j/--workers": (args.workers, 0),
        "--checkpoint-every": (args.checkpoint_every, 0),
        "--keep-checkpoints": (args.keep_checkpoints, 1),
        "--start-epoch": (args.start_epoch, 0),
        "--eval-every": (args.eval_every, 1),
        "--min-size": (args.min_size, 1),
        "--max-size": (args.max_size, 1),
        "--trainable-backbone-layers": (args.trainable_backbone_layers, 0),
    }
    for flag, (value, low) in lowest.items():
        if value is not None and value < low:
            raise utils.UsageError(f"{flag}: must be at least {low}, got {value}")
    for flag, value in {
        "--lr": args.lr,
        "--clip-grad-norm": args.clip_grad_norm,
        "--dist-timeout": args.dist_timeout,
    }.items():
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise utils.UsageError(f"{flag}: must be a positive number, got {value}")
    _validate_stages(args)
    _validate_sampling(dict(args.model_kwargs))
    if args.use_copypaste and not (copypaste_allowed(args.data_augmentation) and "maskrcnn" in args.model):
        raise utils.UsageError(
            "--use-copypaste: works only with --data-augmentation lsj and a Mask R-CNN model (it pastes masks)"
        )
    writes_output = {
        "--auto-resume": (args.auto_resume, "where it looks for checkpoint.pth"),
        "--save-predictions": (args.save_predictions, "where it writes predictions_*.json"),
        "--tensorboard": (args.tensorboard, "where it writes tensorboard/"),
    }
    for flag, (given, role) in writes_output.items():
        if given and not args.output_dir:
            raise utils.UsageError(f"{flag}: needs --output-dir, {role}")
    if args.tensorboard and not utils.tensorboard_available():
        raise utils.UsageError(f"--tensorboard: {utils.TENSORBOARD_HINT}")
    if any(b <= a for a, b in zip(args.lr_steps, args.lr_steps[1:])):
        raise utils.UsageError(f"--lr-steps: epochs must increase, got {' '.join(map(str, args.lr_steps))}")
    utils.check_device(args.device)
    coco_eval.backend_classes(args.eval_backend)  # a missing package stops the run now, not after the first epoch
    _validate_data_path(args)


def _validate_stages(args: argparse.Namespace) -> None:
    stages = 6 if "mobilenet" in args.model else 5  # what torchvision's builders accept for the backbone
    if args.trainable_backbone_layers is not None and args.trainable_backbone_layers > stages:
        raise utils.UsageError(
            f"--trainable-backbone-layers: {args.model}'s backbone has {stages} stages to train, so 0 to {stages}; "
            f"got {args.trainable_backbone_layers}"
        )


# The R-CNN sampling and post-processing arguments and their ranges: a value outside makes a loss NaN (no sample
# to average) or returns nothing, far from the flag that caused it. (low, high, what)
SAMPLING_KWARGS = {
    **{f"{stage}_batch_size_per_image": (1, None, "proposals sampled per image") for stage in ("rpn", "box")},
    **{f"{stage}_positive_fraction": (1e-9, 1, "a fraction") for stage in ("rpn", "box")},
    **{f"rpn_{kind}_nms_top_n_{split}": (1, None, "proposals kept") for kind in ("pre", "post")
       for split in ("train", "test")},
    **{f"{stage}_{kind}_iou_thresh": (0, 1, "an IoU") for stage in ("rpn", "box") for kind in ("fg", "bg")},
    "rpn_nms_thresh": (1e-9, 1, "an IoU"), "box_nms_thresh": (1e-9, 1, "an IoU"),
    "box_detections_per_img": (1, None, "detections kept"), "box_score_thresh": (0, 1, "a score"),
    "min_size": (1, None, "pixels"), "max_size": (1, None, "pixels"),
}  # fmt: skip


def _validate_sampling(model_kwargs: dict[str, Any]) -> None:
    for key, value in model_kwargs.items():
        if key not in SAMPLING_KWARGS:
            continue
        low, high, what = SAMPLING_KWARGS[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise utils.UsageError(f"--model-kwargs: {key} is {what}, {bounds}; got {value!r}")


def _validate_data_path(args: argparse.Namespace) -> None:
    """--data-path is read first (the default backbone file lies in it): a wrong one is named as such."""
    if own_data(args) or Path(args.data_path).is_dir():
        return
    spaces = " (it begins or ends with a space)" if args.data_path != args.data_path.strip() else ""
    raise utils.UsageError(
        f"--data-path: {args.data_path!r} is not a folder{spaces}; pass the COCO root holding train2017/, val2017/ "
        "and annotations/"
    )


def warn_about(args: argparse.Namespace) -> None:
    """Values that run, but probably not as meant."""
    beyond = [step for step in args.lr_steps if step >= args.epochs]
    if args.lr_scheduler == "multisteplr" and beyond:
        print(
            f"Note: --lr-steps {' '.join(map(str, beyond))}: at or beyond --epochs {args.epochs}, so the lr never "
            "decays there; fine if you mean to extend the run later with --epochs"
        )


def _validate_own_data(args: argparse.Namespace) -> None:
    """--train-images/--train-annotations/--val-images/--val-annotations come in pairs, and for each split that runs."""
    for split in ("train", "val"):
        images, annotations = getattr(args, f"{split}_images"), getattr(args, f"{split}_annotations")
        if (images is None) != (annotations is None):
            given, needed = ("images", "annotations") if annotations is None else ("annotations", "images")
            raise utils.UsageError(
                f"--{split}-{given}: needs --{split}-{needed} too (a split is an image folder and its annotation file)"
            )
    if own_data(args) and args.val_images is None:
        # else the evaluation would quietly run on --data-path's val2017
        raise utils.UsageError(
            "--val-images/--val-annotations: missing; your own data needs its evaluation split too "
            "(--train-images, --train-annotations, --val-images, --val-annotations; "
            "--test-only needs only the last two)"
        )
    if own_data(args) and not args.test_only and args.train_images is None:
        raise utils.UsageError(
            "--train-images/--train-annotations: missing; training on your own data needs both splits "
            "(--train-images, --train-annotations, --val-images, --val-annotations)"
        )


def own_data(args: argparse.Namespace) -> bool:
    """Whether the run reads its own annotation files and image folders (not --data-path's 2017 layout)."""
    own_data_flags = (f"{split}_{kind}" for split in ("train", "val") for kind in ("images", "annotations"))
    return any(getattr(args, name) is not None for name in own_data_flags)


def contiguous_labels(args: argparse.Namespace) -> bool:
    """--label-mapping: contiguous labels 1..K, or the category ids themselves (auto: contiguous for own data)."""
    if args.label_mapping == "auto":
        return own_data(args)  # the reference's category-id labels for COCO itself, so torchvision's COCO weights fit
    return args.label_mapping == "contiguous"


# ----------------------------------------------------------------------------- a resumed run's flags

# What describes this process or this command, not the run: never taken from a checkpoint.
NOT_RESTORED = {
    "device", "dist_url", "world_size", "rank", "gpu", "distributed", "dist_backend", "resume", "auto_resume",
    "test_only", "start_epoch", "weights", "allow_changed_flags",
}  # fmt: skip
# What a resumed run may change freely (README, "Evaluate, resume"): how long it runs, how it reports and saves.
FREE_ON_RESUME = {
    "epochs", "lr_steps", "output_dir", "print_freq", "tensorboard", "save_predictions", "workers", "checkpoint_every",
    "keep_checkpoints", "eval_backend", "eval_every", "dist_timeout", "skip_bad_images",
    # where the data are, which may have moved (another cluster, another disk); the checkpoint's labels still apply
    "data_path", "train_images", "train_annotations", "val_images", "val_annotations",
}  # fmt: skip


# What only training reads: an evaluation (--test-only --resume) may differ in these from the recorded run.
TRAINING_ONLY = {
    "batch_size", "opt", "lr", "auto_scale_lr", "momentum", "weight_decay", "norm_weight_decay", "lr_scheduler",
    "lr_step_size", "lr_gamma", "aspect_ratio_group_factor", "trainable_backbone_layers", "data_augmentation",
    "use_copypaste", "sync_bn", "amp", "seed", "clip_grad_norm", "use_deterministic_algorithms", "weights_backbone",
}  # fmt: skip


def typed_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The flags (by dest) that the command line itself gives, whatever their values: a second parse without
    defaults."""
    bare = copy.deepcopy(parser)
    for action in bare._actions:  # argparse offers no public way to drop every default
        action.default = argparse.SUPPRESS
    return set(vars(bare.parse_args(argv)))


def typed_by_value(args: argparse.Namespace, parser: argparse.ArgumentParser) -> set[str]:
    """For main(args) called without a command line: the flags whose values differ from the parser's defaults."""
    defaults = vars(parser.parse_args([]))
    return {dest for dest, value in vars(args).items() if dest in defaults and not _same(value, defaults[dest])}


def _name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _same(a: Any, b: Any) -> bool:
    """Whether two flag values are equal; a checkpoint gives lists and tuples back as they were saved."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _shown(value: Any) -> str:
    """A flag value as it is typed: lists space-separated, KEY=VALUE pairs as such."""
    if isinstance(value, list | tuple):
        return " ".join(f"{item[0]}={item[1]}" if isinstance(item, list | tuple) else str(item) for item in value)
    return str(value)


def restore_recorded(
    args: argparse.Namespace, recorded: dict[str, Any], typed: set[str], path: str, reference: bool = False
) -> list[str]:
    """Take every flag the command did not type from the run the checkpoint recorded. A typed flag that changes what
    the run computes and differs from its recorded value is a UsageError naming both values, unless
    --allow-changed-flags (an evaluation may change what only training reads). Returns the flags taken from the
    checkpoint whose values differ from this command's."""
    free = FREE_ON_RESUME | (TRAINING_ONLY if args.test_only else set())
    if reference and recorded.get("weights_backbone") is None:
        recorded = {**recorded, "weights_backbone": "none"}  # the reference's default is a random backbone
    restored = []
    for dest, value in recorded.items():
        if dest in NOT_RESTORED or not hasattr(args, dest) or _same(getattr(args, dest), value):
            continue
        if dest not in typed:
            setattr(args, dest, list(value) if isinstance(value, tuple) else value)
            restored.append(dest)
        elif dest not in free and not args.allow_changed_flags:
            raise utils.UsageError(
                f"{_name(dest)}: this command says {_shown(getattr(args, dest))} but {path} was trained with "
                f"{_shown(value)}; leave the flag out to go on as recorded, or add --allow-changed-flags to change "
                "what the run computes"
            )
    return restored


def check_world_size(recorded: dict[str, Any], world_size: int, path: str, allowed: bool) -> None:
    """A resumed run's processes: another number would change the total batch and the training order."""
    saved = recorded.get("world_size")
    if saved is not None and int(saved) != world_size and not allowed:
        raise utils.UsageError(
            f"--resume: {path} was trained by {saved} processes and this run has {world_size}, which changes the "
            "batch and the training order; resume with the same number, or add --allow-changed-flags"
        )


def describe(args: argparse.Namespace, world_size: int, restored: list[str]) -> str:
    """The run in a few lines: what it computes, where it writes, what it took from a checkpoint."""
    data = args.data_path if not own_data(args) else f"{args.train_annotations or ''} {args.val_annotations}".strip()
    size = f"{args.min_size or 'default'}-{args.max_size or 'default'} px"
    schedule = f"{args.lr_scheduler}" + (f" at {_shown(args.lr_steps)}" if args.lr_scheduler == "multisteplr" else "")
    lines = [
        f"Run: {args.model} on {data} ({args.dataset}, labels {args.label_mapping}), images {size}",
        f"  training: {args.epochs} epochs, batch {args.batch_size} x {world_size} process(es), {args.opt} lr "
        f"{args.lr:g} ({schedule}), {args.data_augmentation}{', amp' if args.amp else ''}",
        f"  weights: {args.weights or 'none'}; backbone: {args.weights_backbone or 'default'}"
        + (f"; model kwargs: {_shown(args.model_kwargs)}" if args.model_kwargs else ""),
        f"  output: {args.output_dir or 'none'}; seed {args.seed}; device {args.device}",
    ]
    if args.resume:
        taken = f"; taken from it: {', '.join(f'{_name(d)} {_shown(getattr(args, d))}' for d in restored)}"
        lines.append(f"  resumed from {args.resume}{taken if restored else ''}")
    return "\n".join(lines)

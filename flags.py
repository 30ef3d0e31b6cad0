"""train.py's flags beyond parsing them: checking their values before any work, and what they imply.

Every check gives one line naming the flag and what to do (a UsageError: exit status 2), so that a
wrong value stops the run at once instead of failing deep inside it with a traceback.
"""

import argparse

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
    }
    for flag, (value, low) in lowest.items():
        if value is not None and value < low:
            raise utils.UsageError(f"{flag}: must be at least {low}, got {value}")
    for flag, value in {
        "--lr": args.lr,
        "--clip-grad-norm": args.clip_grad_norm,
        "--dist-timeout": args.dist_timeout,
    }.items():
        if value is not None and not value > 0:
            raise utils.UsageError(f"{flag}: must be positive, got {value}")
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

"""train.py's flags: defined (get_args_parser, each with what --resume does with it), checked before any work, and
what they imply (a resumed run's flags, the run described in a few lines).

Every check gives one line naming the flag and what to do (a UsageError: exit status 2), so that a
wrong value stops the run at once instead of failing deep inside it with a traceback. A new flag is one add() in
get_args_parser plus its checks in validate(). Parsed flags are never changed: a resumed run's are a new Namespace.
"""

import argparse
import ast
import copy
import math
from pathlib import Path
from typing import Any

import torch

import annotations
import coco_eval
import deployed
import distributed
import errors
import metrics_log
import models
from checkpoint import CHECKPOINT_FILE
from coco_utils import ANNOTATION_PREFIXES
from solver import DEFAULT_LR, EPOCH_SCHEDULERS
from transforms import DATA_AUGMENTATIONS, copypaste_allowed

# ----------------------------------------------------------------------------- the flags

# What a resumed run does with a recorded flag (each flag says so where it is defined, as `resume=`):
RESTORED = "restored"  # taken from the checkpoint unless typed; a typed change is refused (it changes what is computed)
FREE = "free"  # taken from the checkpoint unless typed; typed, it may change (how long, where, how it reports)
TRAINING = "training"  # as RESTORED, but free for --test-only: only training reads it
NEVER = "never"  # describes this process or this command, not the run: never taken from a checkpoint


def _model_kwarg(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE a Python literal (number, string, tuple...)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """train.py's flags, with the reference's names and meanings; each says what --resume does with it."""
    parser = errors.OneLineArgumentParser(
        prog="train.py",
        description="PyTorch detection training (Mask R-CNN on COCO)",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(*names: str, resume: str = RESTORED, **options) -> None:
        parser.add_argument(*names, **options).on_resume = resume

    add("--data-path", default="data/synthetic", resume=FREE, help="COCO root with train2017/, val2017/, annotations/")
    add("--dataset", default="coco", choices=list(ANNOTATION_PREFIXES),
        help="coco: instances_*.json; coco_kp: person_keypoints_*.json")  # fmt: skip
    add("--model", default="maskrcnn_resnet50_fpn", help="torchvision detection model name")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", resume=NEVER, help="cuda or cpu")
    add("-b", "--batch-size", default=2, type=int, resume=TRAINING,
        help="images per process; total batch = this x processes")  # fmt: skip
    add("--epochs", default=26, type=int, resume=FREE, help="number of epochs to run")
    add("-j", "--workers", default=4, type=int, resume=FREE, help="data loading workers per process")
    add("--opt", default="sgd", type=str.lower, choices=["sgd", "sgd_nesterov", "adamw"], resume=TRAINING,
        help="optimizer")  # fmt: skip
    add("--lr", default=DEFAULT_LR, type=float, resume=TRAINING,
        help="for 16 images per step (8 GPUs x 2); see --auto-scale-lr")  # fmt: skip
    add("--auto-scale-lr", action="store_true", resume=TRAINING,
        help="scale --lr by the total batch / 16 (mmdetection's flag)")  # fmt: skip
    add("--momentum", default=0.9, type=float, resume=TRAINING, help="SGD momentum")
    add("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", resume=TRAINING, help="weight decay")
    add("--norm-weight-decay", default=None, type=float, resume=TRAINING,
        help="weight decay for normalization layers (default: --wd)")  # fmt: skip
    add("--lr-scheduler", default="multisteplr", type=str.lower, choices=list(EPOCH_SCHEDULERS), resume=TRAINING,
        help="epoch scheduler")  # fmt: skip
    add("--lr-step-size", default=8, type=int, resume=TRAINING,
        help="kept for command-line compatibility; unused, as upstream")  # fmt: skip
    add("--lr-steps", default=[16, 22], nargs="+", type=int, resume=FREE,
        help="epochs at which multisteplr decays the lr")  # fmt: skip
    add("--lr-gamma", default=0.1, type=float, resume=TRAINING, help="lr decay factor of multisteplr")
    add("--print-freq", default=20, type=int, resume=FREE,
        help="iterations between log lines (and metrics.jsonl records)")  # fmt: skip
    add("--output-dir", default=".", resume=FREE, help="where checkpoints and metrics.jsonl are saved")
    add("--resume", default="", resume=NEVER, help="checkpoint to continue from: where it stopped (the next batch, "
        "or the next epoch), with the flags it recorded unless given again")  # fmt: skip
    add("--allow-changed-flags", action="store_true", resume=NEVER,
        help="let --resume change a recorded flag that changes what the run computes (model, data...)")  # fmt: skip
    add("--start-epoch", "--start_epoch", default=0, type=int, dest="start_epoch", resume=NEVER, help="first epoch")
    add("--aspect-ratio-group-factor", default=3, type=int, resume=TRAINING,
        help="aspect-ratio bins per side of 1; < 0 disables grouping")  # fmt: skip
    add("--rpn-score-thresh", default=None, type=float, help="RPN score threshold for faster/mask R-CNN")
    add("--trainable-backbone-layers", default=None, type=int, resume=TRAINING, help="ResNet stages to train (0-5)")
    add("--data-augmentation", default="hflip", choices=DATA_AUGMENTATIONS, resume=TRAINING,
        help="training augmentation recipe")  # fmt: skip
    add("--use-copypaste", action="store_true", resume=TRAINING,
        help="copy-paste objects between a batch's images (with lsj)")  # fmt: skip
    add("--sync-bn", action="store_true", resume=TRAINING, help="use SyncBatchNorm when distributed")
    add("--test-only", action="store_true", resume=NEVER, help="only evaluate (the model from --resume or --weights)")
    add("--onnx", default=None, resume=NEVER, metavar="MODEL_ONNX",
        help="with --test-only: evaluate this file export.py wrote (on the CPU) instead of weights")  # fmt: skip
    add("--onnx-runtime", default="onnxruntime", choices=list(deployed.RUNTIMES), resume=NEVER,
        help=deployed.RUNTIME_HELP)  # fmt: skip
    add("--use-deterministic-algorithms", action="store_true", resume=TRAINING, help="force deterministic algorithms")
    add("--world-size", default=1, type=int, resume=NEVER, help="number of distributed processes")
    add("--dist-url", default="env://", resume=NEVER, help="url used to set up distributed training")
    add("--weights", default=None, resume=NEVER,
        help="whole-model weights (fine-tuning, --test-only): a file, or a torchvision enum such as "
        "MaskRCNN_ResNet50_FPN_Weights.COCO_V1 read from torch hub's cache")  # fmt: skip
    add("--weights-backbone", default=None, resume=TRAINING,
        help="ImageNet backbone weights: a file (default <data-path>/resnet50.pth), a torchvision enum such as "
        "ResNet50_Weights.IMAGENET1K_V1 read from torch hub's cache, or none for random")  # fmt: skip
    add("--amp", action="store_true", resume=TRAINING, help="mixed precision (autocast + GradScaler)")
    add("--channels-last", action="store_true", resume=FREE,
        help="convolutions in channels-last memory format (faster CPU training; benchmarks/README.md)")  # fmt: skip
    add("--min-size", default=None, type=int, help="resize the shorter image side to this (R-CNN default 800)")
    add("--max-size", default=None, type=int, help="... and the longer side to at most this (R-CNN default 1333)")
    add("--model-kwargs", default=[], nargs="*", metavar="KEY=VALUE", type=_model_kwarg,
        help="extra keyword arguments for the model builder, e.g. box_batch_size_per_image=128")  # fmt: skip
    add("--seed", default=None, type=int, resume=TRAINING,
        help="seed python, numpy and torch (each rank adds its rank)")  # fmt: skip
    # Never losing work: checkpoints, resuming, stopping cleanly.
    add("--checkpoint-every", default=0, type=int, metavar="N", resume=FREE,
        help="also save checkpoint.pth every N iterations")  # fmt: skip
    add("--keep-checkpoints", default=None, type=int, metavar="K", resume=FREE,
        help="keep only the newest K model_{epoch}.pth")  # fmt: skip
    add("--auto-resume", action="store_true", resume=NEVER,
        help="resume from <output-dir>/checkpoint.pth if it exists (for requeued jobs)")  # fmt: skip
    add("--clip-grad-norm", default=None, type=float, metavar="MAX", resume=TRAINING,
        help="clip the gradient norm to MAX")  # fmt: skip
    add("--tensorboard", action="store_true", resume=FREE,
        help="also log metrics.jsonl's numbers to <output-dir>/tensorboard/")  # fmt: skip
    add("--dist-timeout", default=distributed.DEFAULT_DIST_TIMEOUT, type=float, metavar="SECONDS", resume=FREE,
        help="how long ranks wait for each other in a collective before giving up (a rank died or hangs)")  # fmt: skip
    add("--eval-every", default=1, type=int, metavar="N", resume=FREE,
        help="evaluate every N epochs (and always after the last)")  # fmt: skip
    add("--eval-backend", default=coco_eval.DEFAULT_BACKEND, choices=coco_eval.BACKENDS, resume=FREE,
        help="COCO scoring (same numbers)")  # fmt: skip
    add("--skip-bad-images", action="store_true", resume=FREE,
        help="log and skip missing or unreadable training images instead of stopping")  # fmt: skip
    add(
        "--no-report",
        action="store_true",
        resume=FREE,
        help="skip the error analysis of the last evaluation (about two more COCO evaluations) and report.html",
    )
    add("--save-predictions", action="store_true", resume=FREE,
        help="write each evaluation's detections to <output-dir>/predictions_*.json")  # fmt: skip
    # Your own data: any annotation file and image folder per split, instead of --data-path's 2017 layout.
    for split, role in (("train", "training"), ("val", "evaluation")):
        add(f"--{split}-images", default=None, metavar="DIR", resume=FREE,
            help=f"{role} images (file_name values are relative to it)")  # fmt: skip
        add(f"--{split}-annotations", default=None, metavar="FILE", resume=FREE,
            help=f"{role} annotations, a file of --annotation-format")  # fmt: skip
    add("--annotation-format", default="coco", choices=list(annotations.READERS), resume=FREE,
        help="the annotation files' format (annotations.READERS; register your own reader there)")  # fmt: skip
    add("--label-mapping", default="auto", choices=["auto", "category-ids", "contiguous"],
        help="labels are the category ids (the reference's, num_classes = largest id + 1) or 1..K in id order; "
        "auto: category ids for --data-path, contiguous for your own annotation files")  # fmt: skip
    return parser


def resume_policies(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag's `resume=` (by dest)."""
    return {action.dest: getattr(action, "on_resume", NEVER) for action in parser._actions}


# Builder arguments that train.py sets itself.
RESERVED_MODEL_KWARGS = {"num_classes", "num_keypoints", "weights", "weights_backbone"}


def _validate_onnx(args: argparse.Namespace) -> None:
    if args.onnx is None:
        deployed.check_runtime_flag(args.onnx, args.onnx_runtime)
        return
    if not args.test_only:
        raise errors.UsageError("--onnx: an exported file only evaluates; add --test-only (training needs weights)")
    given = [flag for flag, value in (("--resume", args.resume), ("--weights", args.weights)) if value]
    if given:
        raise errors.UsageError(f"--onnx: evaluates the exported file alone; leave out {given[0]}")


def validate(args: argparse.Namespace) -> None:
    """Catch flag values that would otherwise fail deep inside a run, with a traceback."""
    models.check_model_name(args.model)
    if args.model.startswith("keypointrcnn") and args.dataset != "coco_kp":
        raise errors.UsageError(f"--model: {args.model} needs keypoint annotations; add --dataset coco_kp")
    _validate_own_data(args)
    _validate_onnx(args)
    reserved = sorted(set(dict(args.model_kwargs)) & RESERVED_MODEL_KWARGS)
    if reserved:
        raise errors.UsageError(
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
            raise errors.UsageError(f"{flag}: must be at least {low}, got {value}")
    for flag, value in {
        "--lr": args.lr,
        "--clip-grad-norm": args.clip_grad_norm,
        "--dist-timeout": args.dist_timeout,
    }.items():
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise errors.UsageError(f"{flag}: must be a positive number, got {value}")
    _validate_stages(args)
    _validate_sampling(dict(args.model_kwargs))
    if args.use_copypaste and not (copypaste_allowed(args.data_augmentation) and "maskrcnn" in args.model):
        raise errors.UsageError(
            "--use-copypaste: works only with --data-augmentation lsj and a Mask R-CNN model (it pastes masks)"
        )
    writes_output = {
        "--auto-resume": (args.auto_resume, "where it looks for checkpoint.pth"),
        "--save-predictions": (args.save_predictions, "where it writes predictions_*.json"),
        "--tensorboard": (args.tensorboard, "where it writes tensorboard/"),
    }
    for flag, (given, role) in writes_output.items():
        if given and not args.output_dir:
            raise errors.UsageError(f"{flag}: needs --output-dir, {role}")
    if args.tensorboard and not metrics_log.tensorboard_available():
        raise errors.UsageError(f"--tensorboard: {metrics_log.TENSORBOARD_HINT}")
    if any(b <= a for a, b in zip(args.lr_steps, args.lr_steps[1:])):
        raise errors.UsageError(f"--lr-steps: epochs must increase, got {' '.join(map(str, args.lr_steps))}")
    distributed.check_device(args.device)
    coco_eval.backend_classes(args.eval_backend)  # a missing package stops the run now, not after the first epoch
    _validate_data_path(args)


def _validate_stages(args: argparse.Namespace) -> None:
    stages = 6 if "mobilenet" in args.model else 5  # what torchvision's builders accept for the backbone
    if args.trainable_backbone_layers is not None and args.trainable_backbone_layers > stages:
        raise errors.UsageError(
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
            raise errors.UsageError(f"--model-kwargs: {key} is {what}, {bounds}; got {value!r}")


def _validate_data_path(args: argparse.Namespace) -> None:
    """--data-path is read first (the default backbone file lies in it): a wrong one is named as such."""
    if own_data(args) or Path(args.data_path).is_dir():
        return
    spaces = " (it begins or ends with a space)" if args.data_path != args.data_path.strip() else ""
    raise errors.UsageError(
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
            raise errors.UsageError(
                f"--{split}-{given}: needs --{split}-{needed} too (a split is an image folder and its annotation file)"
            )
    if own_data(args) and args.val_images is None:
        # else the evaluation would quietly run on --data-path's val2017
        raise errors.UsageError(
            "--val-images/--val-annotations: missing; your own data needs its evaluation split too "
            "(--train-images, --train-annotations, --val-images, --val-annotations; "
            "--test-only needs only the last two)"
        )
    if own_data(args) and not args.test_only and args.train_images is None:
        raise errors.UsageError(
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
) -> tuple[argparse.Namespace, list[str]]:
    """Take every flag the command did not type from the run the checkpoint recorded. A typed flag that changes what
    the run computes and differs from its recorded value is a UsageError naming both values, unless
    --allow-changed-flags (an evaluation may change what only training reads). Returns the run's flags (a new
    Namespace) and the flags taken from the checkpoint whose values differ from this command's."""
    policies = resume_policies(get_args_parser())
    free = {FREE, TRAINING} if args.test_only else {FREE}
    if reference and recorded.get("weights_backbone") is None:
        recorded = {**recorded, "weights_backbone": "none"}  # the reference's default is a random backbone
    taken = {}
    for dest, value in recorded.items():
        policy = policies.get(dest, NEVER)  # keys that are no flag (an older run's rank, gpu...) stay out
        if policy == NEVER or _same(getattr(args, dest), value):
            continue
        if dest not in typed:
            taken[dest] = list(value) if isinstance(value, tuple) else value
        elif policy not in free and not args.allow_changed_flags:
            raise errors.UsageError(
                f"{_name(dest)}: this command says {_shown(getattr(args, dest))} but {path} was trained with "
                f"{_shown(value)}; leave the flag out to go on as recorded, or add --allow-changed-flags to change "
                "what the run computes"
            )
    return replaced(args, **taken), list(taken)


def replaced(args: argparse.Namespace, **values: Any) -> argparse.Namespace:
    """A copy of the flags with `values` in place of theirs: the parsed flags themselves never change."""
    return argparse.Namespace(**(vars(args) | values))


def with_auto_resume(args: argparse.Namespace) -> argparse.Namespace:
    """--auto-resume: the flags with <output-dir>/checkpoint.pth as --resume when it exists, so that a requeued
    command continues."""
    if not args.auto_resume:
        return args
    latest = Path(args.output_dir) / CHECKPOINT_FILE
    if not latest.is_file():
        print(f"No {latest} yet: starting from the beginning")
        return args
    print(f"Auto-resuming from {latest}")
    return replaced(args, resume=str(latest))


def as_recorded(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """The flags as a checkpoint records them (`args`): as given, with the run's real number of processes."""
    return vars(args) | {"world_size": world_size}


def check_world_size(recorded: dict[str, Any], world_size: int, path: str, allowed: bool) -> None:
    """A resumed run's processes: another number would change the total batch and the training order."""
    saved = recorded.get("world_size")
    if saved is not None and int(saved) != world_size and not allowed:
        raise errors.UsageError(
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

r"""Train and evaluate torchvision detection models (Mask R-CNN by default) on COCO-format data.

Flags have the names and meanings of torchvision's references/detection (README: the differences). On 8 GPUs:

    torchrun --nproc_per_node=8 train.py --data-path /data/coco --epochs 26 --lr-steps 16 22 \
        --aspect-ratio-group-factor 3

The ImageNet ResNet-50 backbone is read from a local file, <data-path>/resnet50.pth by default
(`--weights-backbone PATH`, or `none` to train from scratch); nothing is ever downloaded.
Read top to bottom: flags, then main(), which builds data, model and optimizer and runs the epochs.
"""

import argparse
import ast
import inspect
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

import coco_eval
import utils
from coco_utils import ANNOTATION_PREFIXES, get_coco
from engine import NonFiniteLossError, TrainingStopped, evaluate, evaluation_record, train_one_epoch
from group_by_aspect_ratio import GroupedBatchSampler, create_aspect_ratio_groups
from transforms import DATA_AUGMENTATIONS, copypaste_allowed, copypaste_collate_fn, get_transform, keypoint_flip_indices

# Models whose ResNet-50 backbone can be read from a torchvision ImageNet state dict.
RESNET50_FPN_MODELS = {
    "fasterrcnn_resnet50_fpn": FasterRCNN,
    "maskrcnn_resnet50_fpn": MaskRCNN,
    "keypointrcnn_resnet50_fpn": KeypointRCNN,
}
BACKBONE_DOWNLOAD_HINT = (
    "download torchvision's ImageNet ResNet-50 (resnet50-0676ba61.pth) and save it there as resnet50.pth, "
    "pass --weights-backbone PATH, or --weights-backbone none to train from scratch"
)


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
    parser = argparse.ArgumentParser(description="PyTorch detection training (Mask R-CNN on COCO)", add_help=add_help)
    parser.add_argument("--data-path", default="data/synthetic", help="COCO root with train2017/, val2017/, annotations/")
    parser.add_argument(
        "--dataset", default="coco", choices=list(ANNOTATION_PREFIXES), help="coco: instances_*.json; coco_kp: person_keypoints_*.json"
    )
    parser.add_argument("--model", default="maskrcnn_resnet50_fpn", help="torchvision detection model name")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("-b", "--batch-size", default=2, type=int, help="images per process; total batch = this x processes")
    parser.add_argument("--epochs", default=26, type=int, help="number of epochs to run")
    parser.add_argument("-j", "--workers", default=4, type=int, help="data loading workers per process")
    parser.add_argument("--opt", default="sgd", choices=["sgd", "sgd_nesterov", "adamw"], help="optimizer")
    parser.add_argument("--lr", default=0.02, type=float, help="0.02 is for 8 GPUs x 2 images; scale it linearly with the total batch")
    parser.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay")
    parser.add_argument("--norm-weight-decay", default=None, type=float, help="weight decay for normalization layers (default: --wd)")
    parser.add_argument("--lr-scheduler", default="multisteplr", choices=["multisteplr", "cosineannealinglr"], help="epoch scheduler")
    parser.add_argument("--lr-step-size", default=8, type=int, help="kept for command-line compatibility; unused, as upstream")
    parser.add_argument("--lr-steps", default=[16, 22], nargs="+", type=int, help="epochs at which multisteplr decays the lr")
    parser.add_argument("--lr-gamma", default=0.1, type=float, help="lr decay factor of multisteplr")
    parser.add_argument("--print-freq", default=20, type=int, help="iterations between log lines (and metrics.jsonl records)")
    parser.add_argument("--output-dir", default=".", help="where checkpoints and metrics.jsonl are saved")
    parser.add_argument("--resume", default="", help="checkpoint to resume from (training continues at the next epoch)")
    parser.add_argument("--start-epoch", "--start_epoch", default=0, type=int, dest="start_epoch", help="first epoch")
    parser.add_argument("--aspect-ratio-group-factor", default=3, type=int, help="aspect-ratio bins per side of 1; < 0 disables grouping")
    parser.add_argument("--rpn-score-thresh", default=None, type=float, help="RPN score threshold for faster/mask R-CNN")
    parser.add_argument("--trainable-backbone-layers", default=None, type=int, help="ResNet stages to train (0-5)")
    parser.add_argument("--data-augmentation", default="hflip", choices=DATA_AUGMENTATIONS, help="training augmentation recipe")
    parser.add_argument("--use-copypaste", action="store_true", help="copy-paste objects between a batch's images (with lsj)")
    parser.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm when distributed")
    parser.add_argument("--test-only", action="store_true", help="only evaluate (the model from --resume or --weights)")
    parser.add_argument("--use-deterministic-algorithms", action="store_true", help="force deterministic algorithms")
    parser.add_argument("--world-size", default=1, type=int, help="number of distributed processes")
    parser.add_argument("--dist-url", default="env://", help="url used to set up distributed training")
    parser.add_argument("--weights", default=None, help="whole-model state dict or checkpoint (fine-tuning, --test-only)")
    parser.add_argument(
        "--weights-backbone", default=None, help="ResNet-50 state dict (default <data-path>/resnet50.pth); 'none' for random"
    )
    parser.add_argument("--amp", action="store_true", help="mixed precision (autocast + GradScaler)")
    parser.add_argument("--min-size", default=None, type=int, help="resize the shorter image side to this (R-CNN default 800)")
    parser.add_argument("--max-size", default=None, type=int, help="... and the longer side to at most this (R-CNN default 1333)")
    parser.add_argument(
        "--model-kwargs",
        default=[],
        nargs="*",
        metavar="KEY=VALUE",
        type=_model_kwarg,
        help="extra keyword arguments for the model builder, e.g. box_batch_size_per_image=128",
    )
    parser.add_argument("--seed", default=None, type=int, help="seed python, numpy and torch (each rank adds its rank)")
    # Never losing work: checkpoints, resuming, stopping cleanly.
    parser.add_argument("--checkpoint-every", default=0, type=int, metavar="N", help="also save checkpoint.pth every N iterations")
    parser.add_argument("--keep-checkpoints", default=None, type=int, metavar="K", help="keep only the newest K model_{epoch}.pth")
    parser.add_argument(
        "--auto-resume", action="store_true", help="resume from <output-dir>/checkpoint.pth if it exists (for requeued jobs)"
    )
    parser.add_argument("--clip-grad-norm", default=None, type=float, metavar="MAX", help="clip the gradient norm to MAX")
    parser.add_argument("--tensorboard", action="store_true", help="also log metrics.jsonl's numbers to <output-dir>/tensorboard/")
    parser.add_argument(
        "--dist-timeout",
        default=utils.DEFAULT_DIST_TIMEOUT,
        type=float,
        metavar="SECONDS",
        help="how long ranks wait for each other in a collective before giving up (a rank died or hangs)",
    )
    parser.add_argument("--eval-backend", default=coco_eval.DEFAULT_BACKEND, choices=coco_eval.BACKENDS, help="COCO scoring (same numbers)")
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="log and skip missing or unreadable training images instead of stopping"
    )
    parser.add_argument(
        "--save-predictions", action="store_true", help="write each evaluation's detections to <output-dir>/predictions_*.json"
    )
    # Your own data: any COCO-format annotation file and image folder per split, instead of --data-path's 2017 layout.
    for split, role in (("train", "training"), ("val", "evaluation")):
        parser.add_argument(f"--{split}-images", default=None, metavar="DIR", help=f"{role} images (file_name values are relative to it)")
        parser.add_argument(f"--{split}-annotations", default=None, metavar="FILE", help=f"{role} annotations, a COCO-format .json")
    parser.add_argument(
        "--label-mapping",
        default="auto",
        choices=["auto", "category-ids", "contiguous"],
        help="labels are the category ids (the reference's, num_classes = largest id + 1) or 1..K in id order; "
        "auto: category ids for --data-path, contiguous for your own annotation files",
    )
    return parser


def _validate_args(args: argparse.Namespace) -> None:
    """Catch flag values that would otherwise fail deep inside a run, with a traceback."""
    detection_models = torchvision.models.list_models(module=torchvision.models.detection)
    if args.model not in detection_models:
        raise utils.UsageError(f"--model: unknown model {args.model!r}; choose one of {', '.join(sorted(detection_models))}")
    if args.model.startswith("keypointrcnn") and args.dataset != "coco_kp":
        raise utils.UsageError(f"--model: {args.model} needs keypoint annotations; add --dataset coco_kp")
    _validate_own_data(args)
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
    for flag, value in {"--lr": args.lr, "--clip-grad-norm": args.clip_grad_norm, "--dist-timeout": args.dist_timeout}.items():
        if value is not None and not value > 0:
            raise utils.UsageError(f"{flag}: must be positive, got {value}")
    if args.use_copypaste and not (copypaste_allowed(args.data_augmentation) and "maskrcnn" in args.model):
        raise utils.UsageError("--use-copypaste: works only with --data-augmentation lsj and a Mask R-CNN model (it pastes masks)")
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
    """--train-images/--train-annotations/--val-images/--val-annotations come in pairs, and for every split that runs."""
    for split in ("train", "val"):
        images, annotations = getattr(args, f"{split}_images"), getattr(args, f"{split}_annotations")
        if (images is None) != (annotations is None):
            given, needed = ("images", "annotations") if annotations is None else ("annotations", "images")
            raise utils.UsageError(f"--{split}-{given}: needs --{split}-{needed} too (a split is an image folder and its annotation file)")
    if _own_data(args) and args.val_images is None:
        # else the evaluation would quietly run on --data-path's val2017
        raise utils.UsageError(
            "--val-images/--val-annotations: missing; your own data needs its evaluation split too "
            "(--train-images, --train-annotations, --val-images, --val-annotations; --test-only needs only the last two)"
        )
    if _own_data(args) and not args.test_only and args.train_images is None:
        raise utils.UsageError(
            "--train-images/--train-annotations: missing; training on your own data needs both splits "
            "(--train-images, --train-annotations, --val-images, --val-annotations)"
        )


def _own_data(args: argparse.Namespace) -> bool:
    return any(getattr(args, f"{split}_{kind}") is not None for split in ("train", "val") for kind in ("images", "annotations"))


# ----------------------------------------------------------------------------- model


def backbone_weights_path(args: argparse.Namespace) -> Path | None:
    """The ResNet-50 file to read, or None to start from random weights."""
    if args.weights_backbone is not None and args.weights_backbone.lower() == "none":
        return None
    if args.weights is not None or (args.test_only and args.resume):
        return None  # the whole model's weights replace the backbone's anyway
    return Path(args.weights_backbone) if args.weights_backbone else Path(args.data_path) / "resnet50.pth"


def load_resnet50_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-50 state dict without its classifier, checked key by key and shape by shape."""
    if not path.is_file():
        raise utils.UsageError(f"--weights-backbone: no ResNet-50 weights at {path}; {BACKBONE_DOWNLOAD_HINT}")
    state = utils.load_file(path, "ResNet-50 state dict", "--weights-backbone")
    expected = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    if not isinstance(state, dict):
        raise utils.UsageError(
            f"--weights-backbone: {path} holds a {type(state).__name__}, not a ResNet-50 state dict; {BACKBONE_DOWNLOAD_HINT}"
        )
    missing = [k for k in expected if k not in state]
    misshapen = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or misshapen:
        problems = [
            f"{len(missing)} missing keys ({', '.join(missing[:3])}...)" if missing else "",
            f"wrong shapes for {', '.join(misshapen[:3])}" if misshapen else "",
        ]
        details = "; ".join(p for p in problems if p)
        raise utils.UsageError(
            f"--weights-backbone: {path} is not a torchvision ResNet-50 state dict ({details}); {BACKBONE_DOWNLOAD_HINT}"
        )
    return {k: state[k] for k in expected}


def _model_kwargs(args: argparse.Namespace) -> dict:
    """What the flags ask of the model builder; unset flags leave the model's own defaults."""
    flags = {"min_size": args.min_size, "max_size": args.max_size, "rpn_score_thresh": args.rpn_score_thresh}
    return {k: v for k, v in flags.items() if v is not None} | dict(args.model_kwargs)


def build_model(
    args: argparse.Namespace, num_classes: int, backbone_state: dict[str, torch.Tensor] | None, num_keypoints: int | None = None
) -> torch.nn.Module:
    """The detection model, built as torchvision builds it: with trained weights (an ImageNet backbone in
    `backbone_state`, or whole-model `--weights` to come), frozen BatchNorm and 3 trainable ResNet stages;
    from scratch, trainable BatchNorm everywhere. A keypoint model predicts `num_keypoints` (the dataset's)."""
    kwargs = _model_kwargs(args)
    if num_keypoints is not None and args.model.startswith("keypointrcnn"):
        kwargs.setdefault("num_keypoints", num_keypoints)
    # --test-only --resume evaluates a whole trained model, as --weights does (backbone_weights_path reads no backbone for
    # either): build it alike, not with trainable BatchNorm (and torchvision's warning when --trainable-backbone-layers is given).
    trained = backbone_state is not None or args.weights is not None or bool(args.test_only and args.resume)
    if not trained or args.model not in RESNET50_FPN_MODELS:
        if args.trainable_backbone_layers is not None:
            kwargs["trainable_backbone_layers"] = args.trainable_backbone_layers
        return torchvision.models.get_model(args.model, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    trainable = 3 if args.trainable_backbone_layers is None else args.trainable_backbone_layers
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=trainable)
    if backbone_state is not None:
        backbone.body.load_state_dict(backbone_state)
    return RESNET50_FPN_MODELS[args.model](backbone, num_classes=num_classes, **kwargs)


def _accepted_model_kwargs(model: torch.nn.Module, builder_name: str) -> set[str]:
    """Every keyword the builder, the model class (and its bases) and its input transform take by name.
    torchvision forwards unknown keywords to the transform, which swallows them silently."""
    functions = [torchvision.models.get_model_builder(builder_name)]
    functions += [vars(cls)["__init__"] for cls in type(model).__mro__ if "__init__" in vars(cls)]
    if hasattr(model, "transform"):
        functions.append(type(model.transform).__init__)
    names = {name for f in functions for name, p in inspect.signature(f).parameters.items() if p.kind is not p.VAR_KEYWORD}
    return names - {"self"}


def _build_model_or_explain(args: argparse.Namespace, num_classes: int, backbone_state, num_keypoints: int | None = None):
    try:
        model = build_model(args, num_classes, backbone_state, num_keypoints)
    except TypeError as e:
        raise utils.UsageError(
            f"{args.model} does not take {_model_kwargs(args) or 'its arguments'} ({e}); drop or fix these flags"
        ) from None
    unknown = sorted(set(dict(args.model_kwargs)) - _accepted_model_kwargs(model, args.model))
    if unknown:
        raise utils.UsageError(f"--model-kwargs: {args.model} has no argument {', '.join(unknown)}; check the spelling")
    return model


def _load_backbone(args: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    path = backbone_weights_path(args)
    if path is None:
        return None
    if args.model not in RESNET50_FPN_MODELS:
        raise utils.UsageError(
            f"--weights-backbone: reading a ResNet-50 file is supported for {', '.join(RESNET50_FPN_MODELS)}; "
            f"pass --weights-backbone none for {args.model}"
        )
    return load_resnet50_state_dict(path)


def read_model_file(path: str, flag: str, training_checkpoint: bool = False) -> dict:
    """Read --weights or --resume up front, so that a wrong file stops the run before any slow work."""
    loaded = utils.load_file(path, "model checkpoint", flag)
    if not isinstance(loaded, dict):
        raise utils.UsageError(f"{flag}: {path} holds a {type(loaded).__name__}, not a state dict or checkpoint")
    missing = [k for k in ("model", "optimizer", "lr_scheduler", "epoch") if k not in loaded]
    if training_checkpoint and missing:
        raise utils.UsageError(f"{flag}: {path} has no {', '.join(missing)}; it is not a training checkpoint (use --weights)")
    return loaded


CLASSIFIER_KEY = "roi_heads.box_predictor.cls_score.weight"
CLASS_DEPENDENT_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def _mismatch(model: torch.nn.Module, state: dict) -> str:
    """What keeps `state` from loading into `model`, in words: a num_classes mismatch, then missing,
    unexpected and misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    # FrozenBatchNorm2d drops the num_batches_tracked of trainable BatchNorm when loading: not a mismatch.
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    misshapen = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    problems = []
    if CLASSIFIER_KEY in misshapen:
        saved, needed = state[CLASSIFIER_KEY].shape[0], expected[CLASSIFIER_KEY].shape[0]
        problems.append(
            f"it was trained for num_classes={saved} and this dataset needs {needed} (labels and the background; see --label-mapping)"
        )
        misshapen = [k for k in misshapen if not k.startswith(CLASS_DEPENDENT_PREFIXES)]
    problems += [
        f"{len(keys)} {what} keys ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    advice = "was it saved from another --model?" if missing or unexpected or misshapen else "use one trained on the same categories"
    return "; ".join(problems + [advice])


def load_model_weights(model: torch.nn.Module, loaded: dict, path: str, flag: str) -> None:
    """Load a whole-model state dict, or a checkpoint's "model", into `model`; a file that does not fit is named with its keys."""
    state = loaded.get("model", loaded)
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DistributedDataParallel wrapper
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise utils.UsageError(f"{flag}: {path} does not fit {type(model).__name__}: {_mismatch(model, state)}") from None


# ----------------------------------------------------------------------------- optimization


def _parameter_groups(model: torch.nn.Module, weight_decay: float, norm_weight_decay: float | None) -> list[dict]:
    """Trainable parameters, with normalization layers' ones in their own group when --norm-weight-decay is set."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm)
    norm, other = [], []
    for module in model.modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        (norm if isinstance(module, norm_types) else other).extend(params)
    return [{"params": other, "weight_decay": weight_decay}, {"params": norm, "weight_decay": norm_weight_decay}]


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    groups = _parameter_groups(model, args.weight_decay, args.norm_weight_decay)
    if args.opt == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.opt == "sgd_nesterov")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.LRScheduler:
    if args.lr_scheduler == "cosineannealinglr":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.lr_steps, gamma=args.lr_gamma)


# ----------------------------------------------------------------------------- data


def _contiguous_labels(args: argparse.Namespace) -> bool:
    if args.label_mapping == "auto":
        return _own_data(args)  # the reference's category-id labels for COCO itself, so torchvision's COCO weights fit
    return args.label_mapping == "contiguous"


def _trained_label_mapping(args: argparse.Namespace, weights: dict | None, checkpoint: dict | None) -> list[int] | None:
    """The labels a trained model already has, when this run must keep them: resuming, or evaluating it."""
    source = checkpoint if checkpoint is not None else (weights if args.test_only else None)
    return None if source is None else source.get("label_to_category_id")


def load_datasets(args: argparse.Namespace, label_to_category_id: list[int] | None):
    """The training split (None with --test-only) and the evaluation split, labelled alike: with
    `label_to_category_id` when given (a trained model's), else as the training annotations say."""
    common = {"dataset": args.dataset, "contiguous_labels": _contiguous_labels(args)}
    dataset_train = None
    if not args.test_only:
        dataset_train = get_coco(
            args.data_path, "train", None, with_masks="maskrcnn" in args.model, skip_bad_images=args.skip_bad_images,
            img_folder=args.train_images, ann_file=args.train_annotations, label_to_category_id=label_to_category_id, **common,
        )  # fmt: skip
        flip_indices = keypoint_flip_indices(dataset_train.keypoint_names) if dataset_train.keypoint_names else None
        dataset_train.transforms = get_transform(True, args.data_augmentation, flip_indices)
        label_to_category_id = dataset_train.label_to_category_id
    # Evaluation reads its ground truth from the annotation file: its targets need no masks. Nor do box-only models' (vision #7489).
    dataset_test = get_coco(
        args.data_path, "val", get_transform(train=False), with_masks=False,
        img_folder=args.val_images, ann_file=args.val_annotations, label_to_category_id=label_to_category_id, **common,
    )  # fmt: skip
    return dataset_train, dataset_test


def build_data_loaders(args: argparse.Namespace, dataset_train, dataset_test, device: torch.device, seed: int):
    """Aspect-ratio grouped, sharded and resumable training batches; unpadded evaluation shards.

    Returns the training sampler (whose order a checkpoint records), the batch sampler (which
    starts a resumed epoch at its next batch) and both loaders. The loaders get their own random
    generators: drawing worker seeds must not move training's random stream.
    """
    pin = device.type == "cuda"
    loader_test = torch.utils.data.DataLoader(
        dataset_test,
        batch_size=1,
        sampler=utils.InferenceSampler(len(dataset_test)),
        num_workers=args.workers,
        collate_fn=utils.collate_fn,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )
    if dataset_train is None:
        return None, None, None, loader_test
    train_sampler = utils.TrainSampler(len(dataset_train), seed)
    if args.aspect_ratio_group_factor >= 0:
        group_ids = create_aspect_ratio_groups(dataset_train, k=args.aspect_ratio_group_factor)
        grouped = GroupedBatchSampler(train_sampler, group_ids, args.batch_size)
    else:
        grouped = torch.utils.data.BatchSampler(train_sampler, args.batch_size, drop_last=True)
    batch_sampler = utils.ResumableBatchSampler(grouped, seed)
    loader_train = torch.utils.data.DataLoader(
        utils.SeededDataset(dataset_train),
        batch_sampler=batch_sampler,
        num_workers=args.workers,
        collate_fn=utils.SeededCollate(copypaste_collate_fn if args.use_copypaste else utils.collate_fn),
        pin_memory=pin,
        generator=torch.Generator().manual_seed(seed),
    )
    return train_sampler, batch_sampler, loader_train, loader_test


def _apply_auto_resume(args: argparse.Namespace) -> None:
    """--auto-resume: take <output-dir>/checkpoint.pth as --resume when it exists, so a requeued command line continues."""
    if not args.auto_resume:
        return
    latest = Path(args.output_dir) / "checkpoint.pth"
    if latest.is_file():
        print(f"Auto-resuming from {latest}")
        args.resume = str(latest)
    else:
        print(f"No {latest} yet: starting from the beginning")


def _make_output_dir(args: argparse.Namespace) -> None:
    """Create --output-dir, refusing one that cannot be written or whose checkpoint this run would overwrite."""
    if not args.output_dir:
        return
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise utils.UsageError(f"--output-dir: {output_dir} is a file, not a folder; choose another path")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as e:
        raise utils.UsageError(f"--output-dir: cannot write to {output_dir} ({e.strerror}); choose a writable folder") from None
    latest = output_dir / "checkpoint.pth"
    continuing = args.resume and Path(args.resume).resolve().parent == output_dir.resolve()
    if latest.exists() and not args.test_only and not continuing:
        raise utils.UsageError(
            f"--output-dir: {output_dir} already holds checkpoint.pth from an earlier run, which this run would overwrite; "
            "add --auto-resume to continue that run, or choose another --output-dir"
        )


def _data_seed(args: argparse.Namespace, checkpoint: dict | None) -> int:
    """The seed of the training order and augmentations: the resumed run's, --seed, or a fresh one shared by all ranks."""
    if checkpoint is not None and "train_state" in checkpoint and not args.test_only:
        return int(checkpoint["train_state"]["seed"])
    if args.seed is not None:
        return args.seed
    return utils.all_gather(random.randrange(2**31))[0]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save_checkpoint(
    args, model, optimizer, lr_scheduler, scaler, train_sampler, classes: dict, epoch: int, iteration: int | None = None
) -> Path:
    """Save the run; call it on every rank (it gathers each rank's random state), rank 0 writes.

    Plain data only (tensors, numbers, strings), so torch.load(weights_only=True) reads it.
    `classes` is the dataset's class_names() (labels to category ids and names, for predict.py).
    `iteration` is None at the end of an epoch, else the iterations done in `epoch` so far.
    """
    checkpoint = {
        **classes,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "epoch": epoch,
        "args": dict(vars(args)),
        "train_state": {**train_sampler.state_dict(), "iteration": iteration, "rng": utils.all_gather(utils.rng_state())},
    }
    if scaler is not None:
        checkpoint["scaler"] = scaler.state_dict()
    complete = iteration is None
    return utils.save_checkpoint(checkpoint, args.output_dir, epoch=epoch if complete else None, keep=args.keep_checkpoints)


def _resume(args: argparse.Namespace, checkpoint: dict, model, optimizer, lr_scheduler, scaler, train_sampler) -> int:
    """Restore a checkpoint; when training, also the optimizer, scheduler, scaler and the position in the
    training order. Sets args.start_epoch and returns the iterations already done in that epoch."""
    load_model_weights(model, checkpoint, args.resume, "--resume")
    if args.test_only:
        return 0
    saved_groups = checkpoint["optimizer"].get("param_groups", [])
    fits = len(saved_groups) == len(optimizer.param_groups) and all(
        set(saved) == set(current) and len(saved["params"]) == len(current["params"])
        for saved, current in zip(saved_groups, optimizer.param_groups)
    )
    if not fits:
        saved = checkpoint.get("args", {})
        raise utils.UsageError(
            f"--resume: the optimizer state in {args.resume} does not fit this run (it was saved with --opt {saved.get('opt', '?')}, "
            f"--model {saved.get('model', '?')}, --norm-weight-decay {saved.get('norm_weight_decay')}); resume with that run's flags"
        )
    optimizer.load_state_dict(checkpoint["optimizer"])
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
    state = checkpoint.get("train_state", {"iteration": None})
    args.start_epoch = checkpoint["epoch"] + (1 if state["iteration"] is None else 0)
    if "order" in state and not train_sampler.load_state_dict(state):
        print(f"Warning: {args.resume} was saved with a training set of {len(state['order'])} images; this one differs")
    if args.start_epoch >= args.epochs:
        print(f"Nothing to train: {args.resume} holds epoch {checkpoint['epoch']} and --epochs is {args.epochs}; raise --epochs to go on")
    return state["iteration"] or 0


def _restore_random_state(checkpoint: dict | None) -> None:
    """Continue each rank's random stream where the checkpoint left it (last, just before training)."""
    states = (checkpoint or {}).get("train_state", {}).get("rng")
    if not states:
        return
    if len(states) != utils.get_world_size():
        print(f"Warning: the checkpoint holds random states for {len(states)} processes, this run has {utils.get_world_size()}")
        return
    utils.set_rng_state(states[utils.get_rank()])


def _periodic_saver(args: argparse.Namespace, save, epoch: int, iters_per_epoch: int):
    """after_step for train_one_epoch: a mid-epoch checkpoint every --checkpoint-every iterations."""
    if not args.checkpoint_every or not args.output_dir:
        return None

    def after_step(done: int) -> None:
        if done % args.checkpoint_every == 0 and done < iters_per_epoch:
            save(epoch, done)

    return after_step


def _save_predictions(args: argparse.Namespace, evaluator: coco_eval.CocoEvaluator, name: str) -> None:
    """--save-predictions: the evaluation's detections as a COCO results file in --output-dir (rank 0 writes)."""
    if args.save_predictions and args.output_dir and utils.is_main_process():
        path = utils.save_json(evaluator.detections(), Path(args.output_dir) / name)
        print(f"Saved the detections to {path}")


def _report_stop(path: Path | None, own_signum: int | None, where: str) -> int:
    """Say where training stopped and how to go on; the exit status is 128 + the signal (SIGTERM's when another rank got it)."""
    name = signal.Signals(own_signum).name if own_signum else "a signal to another rank"
    if path is None:
        print(f"Stopped by {name} {where}; nothing saved (no --output-dir)")
    else:
        print(f"Stopped by {name} {where}; saved {path}. To go on, run the same command with --auto-resume (or --resume {path})")
    return 128 + (own_signum or signal.SIGTERM)


# ----------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    """Train (or only evaluate); returns the exit status: 0, or 128 + the signal that stopped training."""
    _validate_args(args)
    _apply_auto_resume(args)
    # Read every input file first, so that a wrong one stops the run before any slow work.
    backbone_state = _load_backbone(args)
    weights = read_model_file(args.weights, "--weights") if args.weights else None
    checkpoint = read_model_file(args.resume, "--resume", training_checkpoint=not args.test_only) if args.resume else None
    _make_output_dir(args)
    utils.init_distributed_mode(args)
    print(args)
    device = torch.device(args.device)
    if args.seed is not None:
        _seed_everything(args.seed + utils.get_rank())
    if args.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)

    print("Loading data")
    dataset_train, dataset_test = load_datasets(args, _trained_label_mapping(args, weights, checkpoint))
    seed = _data_seed(args, checkpoint)
    train_sampler, batch_sampler, data_loader, data_loader_test = build_data_loaders(args, dataset_train, dataset_test, device, seed)
    labelled = dataset_train or dataset_test  # the split whose labels the model learns (evaluation uses the same)
    classes = labelled.class_names()

    print("Creating model")
    model = _build_model_or_explain(args, labelled.num_classes, backbone_state, len(labelled.keypoint_names) or None)
    model.to(device)
    if args.distributed and args.sync_bn:
        if device.type == "cpu":
            raise utils.UsageError("--sync-bn: SyncBatchNorm runs on GPUs only; leave it out of CPU runs")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[args.gpu] if device.type == "cuda" else None)
        model_without_ddp = model.module

    optimizer = build_optimizer(model_without_ddp, args)
    scaler = torch.amp.GradScaler(device.type) if args.amp else None
    lr_scheduler = build_lr_scheduler(optimizer, args)

    if weights is not None:
        load_model_weights(model_without_ddp, weights, args.weights, "--weights")
    first_iteration = 0
    if checkpoint is not None:
        first_iteration = _resume(args, checkpoint, model_without_ddp, optimizer, lr_scheduler, scaler, train_sampler)

    if args.test_only:
        if weights is None and checkpoint is None:
            print("Warning: --test-only without --resume or --weights evaluates an untrained model")
        torch.backends.cudnn.deterministic = True
        evaluator = evaluate(model_without_ddp, data_loader_test, device, backend=args.eval_backend)
        _save_predictions(args, evaluator, "predictions.json")
        return 0

    def save(epoch: int, iteration: int | None = None) -> Path | None:
        if not args.output_dir:
            return None
        return _save_checkpoint(args, model_without_ddp, optimizer, lr_scheduler, scaler, train_sampler, classes, epoch, iteration)

    print("Start training")
    start_time = time.time()
    iters_per_epoch = len(batch_sampler.batch_sampler)
    _restore_random_state(checkpoint)
    metrics = utils.MetricsWriter(args.output_dir, args.tensorboard, first_step=args.start_epoch * iters_per_epoch + first_iteration)
    with utils.catching_stop_signals() as stop, metrics:
        for epoch in range(args.start_epoch, args.epochs):
            first = first_iteration if epoch == args.start_epoch else 0
            train_sampler.set_epoch(epoch)
            batch_sampler.set_position(epoch, first)
            after_step = _periodic_saver(args, save, epoch, iters_per_epoch)
            try:
                train_one_epoch(
                    model, optimizer, data_loader, device, epoch, args.print_freq, scaler,
                    first_iteration=first, clip_grad_norm=args.clip_grad_norm, stop=stop, after_step=after_step,
                    write_metrics=metrics.write,
                )  # fmt: skip
            except TrainingStopped as stopped:
                path = save(epoch, stopped.iteration)
                return _report_stop(path, stop.signum, f"at epoch {epoch}, iteration {stopped.iteration}/{iters_per_epoch}")
            lr_scheduler.step()
            path = save(epoch)
            evaluator = evaluate(model_without_ddp, data_loader_test, device, backend=args.eval_backend)
            metrics.write(evaluation_record(evaluator, epoch, global_iteration=(epoch + 1) * iters_per_epoch))
            _save_predictions(args, evaluator, f"predictions_{epoch}.json")
            if utils.any_rank(stop.received):
                return _report_stop(path, stop.signum, f"after epoch {epoch}")
    print(f"Training time {time.strftime('%H:%M:%S', time.gmtime(time.time() - start_time))}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Run main(); a UsageError becomes one line on stderr and exit status 2, a failed run one line and status 1."""
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except utils.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not utils.is_collective_failure(e):
            raise
        # Every surviving rank says so (print is silenced beyond rank 0, which may be the one that died).
        sys.stderr.write(
            f"error: rank {utils.get_rank()}: distributed training failed ({utils.short_reason(e)}); another process probably "
            f"died or hangs, see its output (ranks wait --dist-timeout {args.dist_timeout:g} s for each other)\n"
        )
        return 1
    finally:
        utils.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(cli())

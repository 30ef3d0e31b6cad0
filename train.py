r"""Train and evaluate torchvision detection models (Mask R-CNN by default) on COCO-format data.

Flags have the names and meanings of torchvision's references/detection (README: the differences). On 8 GPUs:

    torchrun --nproc_per_node=8 train.py --data-path /data/coco --epochs 26 --lr-steps 16 22 \
        --aspect-ratio-group-factor 3

The ImageNet ResNet-50 backbone is read from a local file, <data-path>/resnet50.pth by default
(`--weights-backbone PATH`, or `none` to train from scratch); nothing is ever downloaded.
Read top to bottom: the flags, then main(): read the input files, build the data, the model and the
optimizer, then run the epochs. The work happens in the modules it names: coco_utils (data), samplers
(training order), models, solver (optimizer, lr schedule), engine (the loops), checkpoint (saving, resuming).
"""

import argparse
import ast
import random
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import checkpoint as ckpt
import coco_eval
import flags
import models
import utils
import weights
from annotations import COCO_JSON
from coco_utils import ANNOTATION_PREFIXES, Classes, get_coco
from engine import (
    NonFiniteLossError,
    Run,
    evaluate,
    save_predictions,
    train_epochs,
)
from samplers import build_data_loaders
from solver import DEFAULT_LR, build_lr_scheduler, build_optimizer, scale_lr
from transforms import DATA_AUGMENTATIONS, get_transform, keypoint_flip_indices

# ----------------------------------------------------------------------------- flags


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
    parser = utils.OneLineArgumentParser(
        description="PyTorch detection training (Mask R-CNN on COCO)",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--data-path", default="data/synthetic", help="COCO root with train2017/, val2017/, annotations/")
    add("--dataset", default="coco", choices=list(ANNOTATION_PREFIXES),
        help="coco: instances_*.json; coco_kp: person_keypoints_*.json")  # fmt: skip
    add("--model", default="maskrcnn_resnet50_fpn", help="torchvision detection model name")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    add("-b", "--batch-size", default=2, type=int, help="images per process; total batch = this x processes")
    add("--epochs", default=26, type=int, help="number of epochs to run")
    add("-j", "--workers", default=4, type=int, help="data loading workers per process")
    add("--opt", default="sgd", type=str.lower, choices=["sgd", "sgd_nesterov", "adamw"], help="optimizer")
    add("--lr", default=DEFAULT_LR, type=float, help="for 16 images per step (8 GPUs x 2); see --auto-scale-lr")
    add("--auto-scale-lr", action="store_true", help="scale --lr by the total batch / 16 (mmdetection's flag)")
    add("--momentum", default=0.9, type=float, help="SGD momentum")
    add("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay")
    add("--norm-weight-decay", default=None, type=float, help="weight decay for normalization layers (default: --wd)")
    add("--lr-scheduler", default="multisteplr", type=str.lower, choices=["multisteplr", "cosineannealinglr"],
        help="epoch scheduler")  # fmt: skip
    add("--lr-step-size", default=8, type=int, help="kept for command-line compatibility; unused, as upstream")
    add("--lr-steps", default=[16, 22], nargs="+", type=int, help="epochs at which multisteplr decays the lr")
    add("--lr-gamma", default=0.1, type=float, help="lr decay factor of multisteplr")
    add("--print-freq", default=20, type=int, help="iterations between log lines (and metrics.jsonl records)")
    add("--output-dir", default=".", help="where checkpoints and metrics.jsonl are saved")
    add("--resume", default="", help="checkpoint to continue from: where it stopped (the next batch, or the next "
        "epoch), with the flags it recorded unless given again")  # fmt: skip
    add("--allow-changed-flags", action="store_true",
        help="let --resume change a recorded flag that changes what the run computes (model, data...)")  # fmt: skip
    add("--start-epoch", "--start_epoch", default=0, type=int, dest="start_epoch", help="first epoch")
    add(
        "--aspect-ratio-group-factor",
        default=3,
        type=int,
        help="aspect-ratio bins per side of 1; < 0 disables grouping",
    )
    add("--rpn-score-thresh", default=None, type=float, help="RPN score threshold for faster/mask R-CNN")
    add("--trainable-backbone-layers", default=None, type=int, help="ResNet stages to train (0-5)")
    add("--data-augmentation", default="hflip", choices=DATA_AUGMENTATIONS, help="training augmentation recipe")
    add("--use-copypaste", action="store_true", help="copy-paste objects between a batch's images (with lsj)")
    add("--sync-bn", action="store_true", help="use SyncBatchNorm when distributed")
    add("--test-only", action="store_true", help="only evaluate (the model from --resume or --weights)")
    add("--use-deterministic-algorithms", action="store_true", help="force deterministic algorithms")
    add("--world-size", default=1, type=int, help="number of distributed processes")
    add("--dist-url", default="env://", help="url used to set up distributed training")
    add("--weights", default=None,
        help="whole-model weights (fine-tuning, --test-only): a file, or a torchvision enum such as "
        "MaskRCNN_ResNet50_FPN_Weights.COCO_V1 read from torch hub's cache")  # fmt: skip
    add("--weights-backbone", default=None,
        help="ImageNet backbone weights: a file (default <data-path>/resnet50.pth), a torchvision enum such as "
        "ResNet50_Weights.IMAGENET1K_V1 read from torch hub's cache, or none for random")  # fmt: skip
    add("--amp", action="store_true", help="mixed precision (autocast + GradScaler)")
    add("--min-size", default=None, type=int, help="resize the shorter image side to this (R-CNN default 800)")
    add("--max-size", default=None, type=int, help="... and the longer side to at most this (R-CNN default 1333)")
    add("--model-kwargs", default=[], nargs="*", metavar="KEY=VALUE", type=_model_kwarg,
        help="extra keyword arguments for the model builder, e.g. box_batch_size_per_image=128")  # fmt: skip
    add("--seed", default=None, type=int, help="seed python, numpy and torch (each rank adds its rank)")
    # Never losing work: checkpoints, resuming, stopping cleanly.
    add("--checkpoint-every", default=0, type=int, metavar="N", help="also save checkpoint.pth every N iterations")
    add("--keep-checkpoints", default=None, type=int, metavar="K", help="keep only the newest K model_{epoch}.pth")
    add("--auto-resume", action="store_true",
        help="resume from <output-dir>/checkpoint.pth if it exists (for requeued jobs)")  # fmt: skip
    add("--clip-grad-norm", default=None, type=float, metavar="MAX", help="clip the gradient norm to MAX")
    add("--tensorboard", action="store_true", help="also log metrics.jsonl's numbers to <output-dir>/tensorboard/")
    add("--dist-timeout", default=utils.DEFAULT_DIST_TIMEOUT, type=float, metavar="SECONDS",
        help="how long ranks wait for each other in a collective before giving up (a rank died or hangs)")  # fmt: skip
    add("--eval-every", default=1, type=int, metavar="N", help="evaluate every N epochs (and always after the last)")
    add("--eval-backend", default=coco_eval.DEFAULT_BACKEND, choices=coco_eval.BACKENDS,
        help="COCO scoring (same numbers)")  # fmt: skip
    add("--skip-bad-images", action="store_true",
        help="log and skip missing or unreadable training images instead of stopping")  # fmt: skip
    add("--save-predictions", action="store_true",
        help="write each evaluation's detections to <output-dir>/predictions_*.json")  # fmt: skip
    # Your own data: any COCO-format annotation file and image folder per split, instead of --data-path's 2017 layout.
    for split, role in (("train", "training"), ("val", "evaluation")):
        add(
            f"--{split}-images",
            default=None,
            metavar="DIR",
            help=f"{role} images (file_name values are relative to it)",
        )
        add(f"--{split}-annotations", default=None, metavar="FILE", help=f"{role} annotations, a COCO-format .json")
    add("--label-mapping", default="auto", choices=["auto", "category-ids", "contiguous"],
        help="labels are the category ids (the reference's, num_classes = largest id + 1) or 1..K in id order; "
        "auto: category ids for --data-path, contiguous for your own annotation files")  # fmt: skip
    return parser


# ----------------------------------------------------------------------------- set-up


def _apply_auto_resume(args: argparse.Namespace) -> None:
    """--auto-resume: take <output-dir>/checkpoint.pth as --resume when it exists, so a requeued command continues."""
    if not args.auto_resume:
        return
    latest = Path(args.output_dir) / ckpt.CHECKPOINT_FILE
    if latest.is_file():
        print(f"Auto-resuming from {latest}")
        args.resume = str(latest)
    else:
        print(f"No {latest} yet: starting from the beginning")


def _read_model_files(args: argparse.Namespace) -> tuple[ckpt.Checkpoint | None, ckpt.Checkpoint | None]:
    """--weights and --resume, read before any slow work so that a wrong file stops the run at once."""
    pretrained = None
    if args.weights:
        pretrained = ckpt.read_model_file(weights.resolve(args.weights, "--weights").path, "--weights")
    resumed = None
    if args.resume:
        resumed = ckpt.read_model_file(args.resume, "--resume", training_checkpoint=not args.test_only)
    return pretrained, resumed


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
        raise utils.UsageError(
            f"--output-dir: cannot write to {output_dir} ({e.strerror}); choose a writable folder"
        ) from None
    latest = output_dir / ckpt.CHECKPOINT_FILE
    continuing = args.resume and Path(args.resume).resolve().parent == output_dir.resolve()
    if latest.exists() and not args.test_only and not continuing:
        raise utils.UsageError(
            f"--output-dir: {output_dir} already holds checkpoint.pth from an earlier run, which this run would "
            "overwrite; add --auto-resume to continue that run, or choose another --output-dir"
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _data_seed(args: argparse.Namespace, resumed: ckpt.Checkpoint | None) -> int:
    """The seed of the training order and augmentations: the resumed run's, --seed, or a new one all ranks share."""
    if resumed is not None and resumed.train_state is not None and not args.test_only:
        return int(resumed.train_state.seed)
    if args.seed is not None:
        return args.seed
    return utils.all_gather(random.randrange(2**31))[0]


# ----------------------------------------------------------------------------- data


def _trained_label_mapping(
    args: argparse.Namespace, pretrained: ckpt.Checkpoint | None, resumed: ckpt.Checkpoint | None
) -> list[int] | None:
    """The labels a trained model already has, when this run must keep them: resuming, or evaluating it."""
    source = resumed if resumed is not None else (pretrained if args.test_only else None)
    return None if source is None or source.classes is None else source.classes.label_to_category_id


def _trained_num_classes(args: argparse.Namespace, pretrained, resumed) -> int:
    """With category-id labels, a model trained for more ids than the data has (torchvision's COCO models have 91)
    keeps its classes, as the reference does: no class layer is re-initialised."""
    source = resumed if resumed is not None else pretrained
    if source is None or flags.contiguous_labels(args):
        return 0
    return models.num_classes_in(models.ModelSpec.from_args(args), source.model) or 0


def _unused_categories(args: argparse.Namespace) -> dict:
    """--label-mapping auto on your own files labels only the categories that annotations use, in the training file
    or the evaluation file (a small training set may lack one)."""
    if args.label_mapping != "auto" or not flags.contiguous_labels(args):
        return {}
    val_file = Path(args.val_annotations or "")
    used = COCO_JSON.read(val_file).category_ids.tolist() if val_file.is_file() else []
    return {"leave_out_unused_categories": True, "used_elsewhere": used}


def load_datasets(args: argparse.Namespace, label_to_category_id: list[int] | None, min_num_classes: int = 0):
    """The training split (None with --test-only) and the evaluation split, labelled alike: with
    `label_to_category_id` when given (a trained model's), else as the training annotations say (with category-id
    labels, `min_num_classes` labels at least)."""
    common = {
        "dataset": args.dataset, "contiguous_labels": flags.contiguous_labels(args), "min_num_classes": min_num_classes
    }  # fmt: skip
    dataset_train = None
    if not args.test_only:
        dataset_train = get_coco(
            args.data_path, "train", None, with_masks="maskrcnn" in args.model, require_masks="maskrcnn" in args.model,
            skip_bad_images=args.skip_bad_images,
            img_folder=args.train_images, ann_file=args.train_annotations, label_to_category_id=label_to_category_id,
            **_unused_categories(args), **common,
        )  # fmt: skip
        flip_indices = keypoint_flip_indices(dataset_train.keypoint_names) if dataset_train.keypoint_names else None
        dataset_train.transforms = get_transform(True, args.data_augmentation, flip_indices)
        label_to_category_id = dataset_train.label_to_category_id
    # Evaluation reads its ground truth from the annotation file: its targets need no masks, nor do box-only
    # models' (vision #7489).
    dataset_test = get_coco(
        args.data_path, "val", get_transform(train=False), with_masks=False,
        img_folder=args.val_images, ann_file=args.val_annotations, label_to_category_id=label_to_category_id, **common,
    )  # fmt: skip
    return dataset_train, dataset_test


# ----------------------------------------------------------------------------- model


def _check_room_for_checkpoints(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Before training: one checkpoint must fit in --output-dir; warn when the ones the run keeps will not."""
    if not args.output_dir or not utils.is_main_process():
        return
    kept = min(args.keep_checkpoints or args.epochs, args.epochs - args.start_epoch) + 1  # and one being written
    size = ckpt.estimated_checkpoint_bytes(model, args.opt)
    ckpt.check_room_for_the_run(Path(args.output_dir), size, kept)


def _built_as_trained(args: argparse.Namespace, resumed: ckpt.Checkpoint | None) -> bool:
    """Whether the model is built as torchvision builds it with trained weights (frozen BatchNorm, the builder's
    trainable stages) without a backbone file to read: whole-model weights come next (--weights, --test-only
    --resume), or the run being resumed started from trained weights (its backbone values are in the checkpoint)."""
    if args.weights is not None or (args.test_only and args.resume):
        return True
    if resumed is None:
        return False
    backbone = args.weights_backbone  # None: the default file, <data-path>/resnet50.pth, which the run read
    return resumed.args.get("weights") is not None or backbone is None or str(backbone).lower() != "none"


def _build_model(args: argparse.Namespace, classes: Classes, backbone, device: torch.device, as_trained: bool):
    """The model on `device`, and the same model without its DistributedDataParallel wrapper."""
    model = models.build_model_or_explain(
        models.ModelSpec.from_args(args),
        classes.num_classes,
        backbone=backbone,
        num_keypoints=len(classes.keypoint_names) or None,
        whole_model_weights=as_trained,
    )
    model.to(device)
    if args.distributed and args.sync_bn:
        if device.type == "cpu":
            raise utils.UsageError("--sync-bn: SyncBatchNorm runs on GPUs only; leave it out of CPU runs")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not args.distributed:
        return model, model
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[args.gpu] if device.type == "cuda" else None)
    return ddp, ddp.module


def _load_whole_model(args: argparse.Namespace, model: torch.nn.Module, pretrained, resumed) -> None:
    """--weights (fine-tuned to the dataset's classes when training) and --resume into the model; a model that
    descends from torchvision's legacy COCO weights gets their FrozenBatchNorm eps, as torchvision's builder sets it."""
    spec = models.ModelSpec.from_args(args)
    if pretrained is not None:
        new = models.load_model_weights(model, spec, pretrained.model, args.weights, "--weights", not args.test_only)
        if new:
            trained_for, needs = (
                models.num_classes_in(spec, pretrained.model),
                models.num_classes_in(spec, model.state_dict()),
            )
            print(
                f"Fine-tuning {args.weights}, trained for {trained_for} classes, to this dataset's {needs}: "
                f"{', '.join(new)} start as the model builder initialises them; every other tensor is loaded"
            )
    if resumed is not None:
        models.load_model_weights(model, spec, resumed.model, args.resume, "--resume")
    recorded = resumed.args.get("weights") if resumed is not None else None
    if any(value and weights.identify(str(value)).legacy_eps for value in (args.weights, recorded)):
        weights.overwrite_eps(model, 0.0)


# ----------------------------------------------------------------------------- main


def _set_up(args: argparse.Namespace, typed: set[str]) -> tuple[models.Backbone | None, Any, Any, list[str]]:
    """Check the flags, read every input file (a wrong one stops the run before any slow work), take a resumed run's
    flags from its checkpoint, create the output folder and join the process group."""
    flags.validate(args)
    _apply_auto_resume(args)
    pretrained, resumed = _read_model_files(args)
    restored = []
    if resumed is not None:
        reference = resumed.source == "torchvision reference"
        restored = flags.restore_recorded(args, resumed.args, typed, args.resume, reference)
        flags.validate(args)
    backbone = models.load_backbone(args) if resumed is None or args.test_only else None
    _make_output_dir(args)
    utils.init_distributed_mode(args)
    if args.output_dir and utils.is_main_process():
        ckpt.remove_stale_temporary_files(Path(args.output_dir))
    if resumed is not None and not args.test_only:
        flags.check_world_size(resumed.args, utils.get_world_size(), args.resume, args.allow_changed_flags)
    print(flags.describe(args, utils.get_world_size(), restored))
    flags.warn_about(args)
    if args.seed is not None:
        _seed_everything(args.seed + utils.get_rank())
    if args.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)
    return backbone, pretrained, resumed, restored


def main(args: argparse.Namespace, typed: set[str] | None = None) -> int:
    """Train (or only evaluate); returns the exit status: 0, or 128 + the signal that stopped training. `typed` are
    the flags the command line gave (cli() knows them); a resumed run takes the others from its checkpoint."""
    typed = flags.typed_by_value(args, get_args_parser()) if typed is None else typed
    backbone, pretrained, resumed, _ = _set_up(args, typed)
    device = torch.device(args.device)

    print("Loading data")
    mapping = _trained_label_mapping(args, pretrained, resumed)
    dataset_train, dataset_test = load_datasets(args, mapping, _trained_num_classes(args, pretrained, resumed))
    seed = _data_seed(args, resumed)
    train_sampler, batch_sampler, data_loader, data_loader_test = build_data_loaders(
        args, dataset_train, dataset_test, device, seed
    )
    classes = (dataset_train or dataset_test).classes  # the training split's: what the model learns

    print("Creating model")
    model, model_without_ddp = _build_model(args, classes, backbone, device, _built_as_trained(args, resumed))
    _load_whole_model(args, model_without_ddp, pretrained, resumed)

    if args.test_only:
        if pretrained is None and resumed is None:
            print("Warning: --test-only without --resume or --weights evaluates an untrained model")
        torch.backends.cudnn.deterministic = True
        evaluator = evaluate(model_without_ddp, data_loader_test, device, backend=args.eval_backend)
        save_predictions(args, evaluator, "predictions.json")
        return 0

    iters_per_epoch = len(batch_sampler.batch_sampler)
    if resumed is None:  # a resumed run goes on with its optimizer's lr
        scale_lr(args, utils.get_world_size())
    optimizer = build_optimizer(model_without_ddp, args)
    _check_room_for_checkpoints(args, model_without_ddp)
    lr_scheduler = build_lr_scheduler(optimizer, args, iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if args.amp else None
    first_iteration = 0
    if resumed is not None:
        args.start_epoch, first_iteration = ckpt.restore_training_state(
            resumed, args.resume, optimizer, lr_scheduler, scaler, train_sampler
        )
    unevaluated = resumed.unevaluated_epoch if resumed is not None else None
    if resumed is not None and args.start_epoch >= args.epochs and unevaluated is None:
        print(f"Nothing to train: {args.resume} holds epoch {resumed.epoch} and --epochs is {args.epochs}; "
              "raise --epochs to go on")  # fmt: skip
    run = Run(args, model, model_without_ddp, optimizer, lr_scheduler, scaler, train_sampler, batch_sampler,
              data_loader, data_loader_test, classes, device, unevaluated)  # fmt: skip
    ckpt.restore_random_state(resumed)
    return train_epochs(run, first_iteration)


def cli(argv: list[str] | None = None) -> int:
    """Run main(); a UsageError becomes one line on stderr and exit status 2, a failed run one line and status 1."""
    parser = get_args_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a one-line argparse error (already written)
        return int(e.code or 0)
    try:
        return main(args, flags.typed_flags(parser, argv))
    except KeyboardInterrupt:  # before training started (in training, a first Ctrl-C stops after the iteration)
        print("error: interrupted (Ctrl-C) before training started; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
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
            f"error: rank {utils.get_rank()}: distributed training failed ({utils.short_reason(e)}); another process "
            f"probably died or hangs, see its output (ranks wait --dist-timeout {args.dist_timeout:g} s for each "
            "other)\n"
        )
        return 1
    finally:
        utils.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(cli())

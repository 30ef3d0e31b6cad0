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
import random
import signal
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import annotations
import checkpoint as ckpt
import deployed
import distributed
import engine
import errors
import flags
import models
import weights
from coco_utils import get_coco
from engine import EvaluatorFactory, NonFiniteLossError, Run, coco_evaluators, evaluate, save_predictions, train_epochs
from flags import get_args_parser  # noqa: F401 - upstream's train.get_args_parser
from labels import Classes
from samplers import build_data_loaders
from solver import build_lr_scheduler, build_optimizer, scaled_lr
from transforms import get_transform, keypoint_flip_indices

# ----------------------------------------------------------------------------- set-up


@dataclass
class Inputs:
    """What a run found before any slow work (train.py's _set_up); nothing in it changes afterwards."""

    args: argparse.Namespace  # the run's flags: as typed, with --auto-resume's --resume and a resumed run's own
    processes: distributed.Processes
    pretrained: ckpt.Checkpoint | None  # --weights
    resumed: ckpt.Checkpoint | None  # --resume
    backbone: models.Backbone | None
    exported: deployed.OnnxModel | None  # --onnx: the exported model, which --test-only evaluates instead
    typed: set[str]  # the flags the command line gave (by dest)


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
        raise errors.UsageError(f"--output-dir: {output_dir} is a file, not a folder; choose another path")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as e:
        raise errors.UsageError(
            f"--output-dir: cannot write to {output_dir} ({e.strerror}); choose a writable folder"
        ) from None
    latest = output_dir / ckpt.CHECKPOINT_FILE
    continuing = args.resume and Path(args.resume).resolve().parent == output_dir.resolve()
    if latest.exists() and not args.test_only and not continuing:
        raise errors.UsageError(
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
    return distributed.all_gather(random.randrange(2**31))[0]


# ----------------------------------------------------------------------------- data


def _trained_label_mapping(
    args: argparse.Namespace, pretrained: ckpt.Checkpoint | None, resumed: ckpt.Checkpoint | None, exported=None
) -> list[int] | None:
    """The labels a trained model already has, when this run must keep them: resuming, or evaluating it."""
    if exported is not None:
        return exported.classes.label_to_category_id
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
    reader = annotations.reader_named(args.annotation_format)
    used = reader.read(val_file).category_ids.tolist() if val_file.is_file() else []
    return {"leave_out_unused_categories": True, "used_elsewhere": used}


def load_datasets(args: argparse.Namespace, label_to_category_id: list[int] | None, min_num_classes: int = 0):
    """The training split (None with --test-only) and the evaluation split, labelled alike: with
    `label_to_category_id` when given (a trained model's), else as the training annotations say (with category-id
    labels, `min_num_classes` labels at least)."""
    common = {
        "dataset": args.dataset, "contiguous_labels": flags.contiguous_labels(args), "min_num_classes": min_num_classes,
        "reader": annotations.reader_named(args.annotation_format),
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
    if not args.output_dir or not distributed.is_main_process():
        return
    kept = min(args.keep_checkpoints or args.epochs, args.epochs - args.start_epoch) + 1  # and one being written
    size = ckpt.estimated_checkpoint_bytes(model, args.opt)
    ckpt.check_room_for_the_run(Path(args.output_dir), size, kept)


def _build_model(inputs: Inputs, classes: Classes, device: torch.device):
    """The model on `device`, and the same model without its DistributedDataParallel wrapper."""
    args, processes = inputs.args, inputs.processes
    model = models.build_model_or_explain(
        models.ModelSpec.from_args(args),
        classes.num_classes,
        backbone=inputs.backbone,
        num_keypoints=len(classes.keypoint_names) or None,
        whole_model_weights=models.built_as_trained(args, inputs.resumed),
    )
    model.to(device)
    if args.channels_last:  # oneDNN keeps the activations NHWC: fewer layout conversions (benchmarks/README.md)
        model.to(memory_format=torch.channels_last)
    if processes.distributed and args.sync_bn:
        if device.type == "cpu":
            raise errors.UsageError("--sync-bn: SyncBatchNorm runs on GPUs only; leave it out of CPU runs")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not processes.distributed:
        return model, model
    device_ids = [processes.gpu] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return ddp, ddp.module


def _load_whole_model(inputs: Inputs, model: torch.nn.Module) -> None:
    """--weights (fine-tuned to the dataset's classes when training) and --resume into the model
    (models.load_whole_model, the one path for weights)."""
    args, spec = inputs.args, models.ModelSpec.from_args(inputs.args)
    if inputs.pretrained is not None:
        new = models.load_whole_model(model, spec, inputs.pretrained, args.weights, "--weights", not args.test_only)
        if new:
            trained_for, needs = (
                models.num_classes_in(spec, inputs.pretrained.model),
                models.num_classes_in(spec, model.state_dict()),
            )
            print(
                f"Fine-tuning {args.weights}, trained for {trained_for} classes, to this dataset's {needs}: "
                f"{', '.join(new)} start as the model builder initialises them; every other tensor is loaded"
            )
    if inputs.resumed is not None:
        models.load_whole_model(model, spec, inputs.resumed, args.resume, "--resume")


# ----------------------------------------------------------------------------- main


def _set_up(args: argparse.Namespace, typed: set[str]) -> Inputs:
    """Check the flags, read every input file (a wrong one stops the run before any slow work), take a resumed run's
    flags from its checkpoint, create the output folder and join the process group."""
    flags.validate(args)
    args = flags.with_auto_resume(args)
    pretrained, resumed = _read_model_files(args)
    restored = []
    if resumed is not None:
        reference = resumed.source == "torchvision reference"
        args, restored = flags.restore_recorded(args, resumed.args, typed, args.resume, reference)
        flags.validate(args)
    exported = deployed.OnnxModel(args.onnx, "--onnx", runtime=args.onnx_runtime) if args.onnx else None
    backbone = models.load_backbone(args) if exported is None and (resumed is None or args.test_only) else None
    _make_output_dir(args)
    processes = distributed.init_distributed_mode(args)
    if args.output_dir and distributed.is_main_process():
        ckpt.remove_stale_temporary_files(Path(args.output_dir))
    if resumed is not None and not args.test_only:
        flags.check_world_size(resumed.args, processes.world_size, args.resume, args.allow_changed_flags)
    print(flags.describe(args, processes.world_size, restored))
    flags.warn_about(args)
    if args.seed is not None:
        _seed_everything(args.seed + processes.rank)
    if args.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)
    return Inputs(args, processes, pretrained, resumed, backbone, exported, typed)


def _test_only(inputs: Inputs, model: torch.nn.Module, loader: Iterable, device, make_evaluator,
               command: list[str] | None) -> int:  # fmt: skip
    """--test-only: evaluate the model once (its detections to predictions.json with --save-predictions); with a
    typed --output-dir (not the default "." a quick evaluation would litter), its records and report.html there."""
    if inputs.pretrained is None and inputs.resumed is None and inputs.exported is None:
        print("Warning: --test-only without --resume or --weights evaluates an untrained model")
    torch.backends.cudnn.deterministic = True
    records = "output_dir" in inputs.typed
    if records:
        engine.record_run(inputs.args, flags.as_recorded(inputs.args, inputs.processes.world_size), command)
    evaluator = evaluate(model, loader, device, evaluator=make_evaluator(model, loader))
    save_predictions(inputs.args, evaluator, "predictions.json")
    args, trained = inputs.args, inputs.resumed or inputs.pretrained
    if records:
        weights = args.resume or args.weights or args.onnx
        engine.finish_test_only(args, evaluator, loader, weights, trained.epoch if trained is not None else None)
    return 0


def _training_run(inputs: Inputs, model, model_without_ddp, classes: Classes, samplers_and_loaders, device,
                  make_evaluator: EvaluatorFactory) -> Run:  # fmt: skip
    """The optimizer, the lr schedule and the scaler, with what a resumed run restores into them: a Run."""
    args, resumed, world_size = inputs.args, inputs.resumed, inputs.processes.world_size
    train_sampler, batch_sampler, data_loader, data_loader_test = samplers_and_loaders
    lr = args.lr if resumed is not None else scaled_lr(args, world_size)  # a resumed run goes on with its optimizer's
    optimizer = build_optimizer(model_without_ddp, args, lr)
    _check_room_for_checkpoints(args, model_without_ddp)
    lr_scheduler = build_lr_scheduler(optimizer, args, len(batch_sampler.batch_sampler))
    scaler = torch.amp.GradScaler(device.type) if args.amp else None
    state = ckpt.RunState(flags.as_recorded(args, world_size), classes, model_without_ddp, optimizer, lr_scheduler,
                          train_sampler, scaler)  # fmt: skip
    start_epoch, first_iteration, unevaluated = args.start_epoch, 0, None
    if resumed is not None:
        start_epoch, first_iteration = state.restore(resumed, args.resume)
        unevaluated = resumed.unevaluated_epoch(args.resume)
        if start_epoch >= args.epochs and unevaluated is None:
            print(f"Nothing to train: {args.resume} holds epoch {resumed.epoch} and --epochs is {args.epochs}; "
                  "raise --epochs to go on")  # fmt: skip
    return Run(args, state, model, batch_sampler, data_loader, data_loader_test, device, make_evaluator,
               start_epoch, first_iteration, unevaluated)  # fmt: skip


def main(args: argparse.Namespace, typed: set[str] | None = None, *, evaluators: EvaluatorFactory | None = None,
         command: list[str] | None = None) -> int:  # fmt: skip
    """Train (or only evaluate); returns the exit status: 0, or 128 + the signal that stopped training. `typed` are
    the flags the command line gave (cli() knows them); a resumed run takes the others from its checkpoint.
    `evaluators` makes the evaluator of each evaluation (engine.EvaluatorFactory; default COCO's, --eval-backend).
    `command` is the command line, for the run's record in metrics.jsonl (cli() passes it)."""
    typed = flags.typed_by_value(args, get_args_parser()) if typed is None else typed
    inputs = _set_up(args, typed)
    args, device = inputs.args, torch.device(inputs.processes.device)
    make_evaluator = evaluators or coco_evaluators(args.eval_backend)

    print("Loading data")
    mapping = _trained_label_mapping(args, inputs.pretrained, inputs.resumed, inputs.exported)
    min_classes = _trained_num_classes(args, inputs.pretrained, inputs.resumed)
    dataset_train, dataset_test = load_datasets(args, mapping, min_classes)
    loaders = build_data_loaders(args, dataset_train, dataset_test, device, _data_seed(args, inputs.resumed))
    classes = (dataset_train or dataset_test).classes  # the training split's: what the model learns

    if inputs.exported is not None:  # --test-only --onnx: the exported file, evaluated as weights would be
        return _test_only(inputs, inputs.exported, loaders[3], torch.device("cpu"), make_evaluator, command)
    print("Creating model")
    model, model_without_ddp = _build_model(inputs, classes, device)
    _load_whole_model(inputs, model_without_ddp)
    if args.test_only:
        return _test_only(inputs, model_without_ddp, loaders[3], device, make_evaluator, command)
    run = _training_run(inputs, model, model_without_ddp, classes, loaders, device, make_evaluator)
    engine.record_run(args, run.state.args, command)  # every check passed: the run starts
    ckpt.restore_random_state(inputs.resumed)
    return train_epochs(run)


def cli(argv: list[str] | None = None) -> int:
    """Run main(); a UsageError becomes one line on stderr and exit status 2, a failed run one line and status 1."""
    parser = get_args_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a one-line argparse error (already written)
        return int(e.code or 0)
    try:
        return main(args, flags.typed_flags(parser, argv), command=["train.py", *argv])
    except KeyboardInterrupt:  # before training started (in training, a first Ctrl-C stops after the iteration)
        print("error: interrupted (Ctrl-C) before training started; nothing was saved", file=sys.stderr)
        return 128 + signal.SIGINT
    except errors.UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not distributed.is_collective_failure(e):
            raise
        # Every surviving rank says so (print is silenced beyond rank 0, which may be the one that died).
        sys.stderr.write(
            f"error: rank {distributed.get_rank()}: distributed training failed ({errors.short_reason(e)}); another "
            f"process probably died or hangs, see its output (ranks wait --dist-timeout {args.dist_timeout:g} s for "
            "each other)\n"
        )
        return 1
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(cli())

"""Building detection models: the model and its backbone from flags, weights loaded with a diagnosis of what does
not fit, and a trained model back from a checkpoint.

    spec = ModelSpec.from_args(args)                 # --model, --min-size, --max-size, --model-kwargs, ...
    model = build_model(spec, num_classes, backbone_state=load_resnet50_state_dict(path))
    load_model_weights(model, checkpoint.model, path, "--weights")
    model, classes = model_from_checkpoint(checkpoint, path, "--checkpoint")   # what predict.py does

The ImageNet ResNet-50 is read from a local file (nothing is downloaded). As torchvision builds its
models with trained weights, the backbone then has frozen BatchNorm and 3 trainable stages; a model
trained from scratch has trainable BatchNorm everywhere.
"""

import argparse
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

import utils
from checkpoint import Checkpoint, load_file
from coco_utils import Classes

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
CLASSIFIER_KEY = "roi_heads.box_predictor.cls_score.weight"
CLASS_DEPENDENT_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


@dataclass
class ModelSpec:
    """What a model is built from: train.py's model flags, as its checkpoints record them in `args`."""

    model: str = "maskrcnn_resnet50_fpn"
    min_size: int | None = None
    max_size: int | None = None
    rpn_score_thresh: float | None = None
    trainable_backbone_layers: int | None = None
    model_kwargs: list[tuple[str, Any]] = field(default_factory=list)  # KEY=VALUE pairs for the builder

    @classmethod
    def from_args(cls, args: argparse.Namespace | Mapping[str, Any]) -> "ModelSpec":
        """From train.py's flags, or the `args` a checkpoint recorded (missing ones keep their defaults)."""
        values = vars(args) if isinstance(args, argparse.Namespace) else args
        fields = {name: values[name] for name in cls.__dataclass_fields__ if values.get(name) is not None}
        return cls(**fields | {"model_kwargs": [tuple(pair) for pair in fields.get("model_kwargs", [])]})

    def builder_kwargs(self) -> dict:
        """What the flags ask of the model builder; unset flags leave the model's own defaults."""
        flags = {"min_size": self.min_size, "max_size": self.max_size, "rpn_score_thresh": self.rpn_score_thresh}
        return {k: v for k, v in flags.items() if v is not None} | dict(self.model_kwargs)


# ----------------------------------------------------------------------------- the backbone


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
    state = load_file(path, "ResNet-50 state dict", "--weights-backbone")
    expected = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    if not isinstance(state, dict):
        raise utils.UsageError(
            f"--weights-backbone: {path} holds a {type(state).__name__}, not a ResNet-50 state dict; "
            f"{BACKBONE_DOWNLOAD_HINT}"
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
            f"--weights-backbone: {path} is not a torchvision ResNet-50 state dict ({details}); "
            f"{BACKBONE_DOWNLOAD_HINT}"
        )
    return {k: state[k] for k in expected}


def load_backbone(args: argparse.Namespace) -> dict[str, torch.Tensor] | None:
    """The backbone weights the flags ask for (read up front, so that a wrong file stops the run at once)."""
    path = backbone_weights_path(args)
    if path is None:
        return None
    if args.model not in RESNET50_FPN_MODELS:
        raise utils.UsageError(
            f"--weights-backbone: reading a ResNet-50 file is supported for {', '.join(RESNET50_FPN_MODELS)}; "
            f"pass --weights-backbone none for {args.model}"
        )
    return load_resnet50_state_dict(path)


# ----------------------------------------------------------------------------- the model


def build_model(
    spec: ModelSpec,
    num_classes: int,
    backbone_state: dict[str, torch.Tensor] | None = None,
    num_keypoints: int | None = None,
    whole_model_weights: bool = False,
) -> torch.nn.Module:
    """The detection model, built as torchvision builds it: with trained weights (an ImageNet backbone in
    `backbone_state`, or `whole_model_weights` to be loaded next: --weights, --test-only --resume), frozen BatchNorm
    and 3 trainable ResNet stages; from scratch, trainable BatchNorm everywhere. A keypoint model predicts
    `num_keypoints` (the dataset's)."""
    kwargs = spec.builder_kwargs()
    if num_keypoints is not None and spec.model.startswith("keypointrcnn"):
        kwargs.setdefault("num_keypoints", num_keypoints)
    trained = backbone_state is not None or whole_model_weights
    if not trained or spec.model not in RESNET50_FPN_MODELS:
        if spec.trainable_backbone_layers is not None:
            kwargs["trainable_backbone_layers"] = spec.trainable_backbone_layers
        return torchvision.models.get_model(
            spec.model, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
        )
    trainable = 3 if spec.trainable_backbone_layers is None else spec.trainable_backbone_layers
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=trainable
    )
    if backbone_state is not None:
        backbone.body.load_state_dict(backbone_state)
    return RESNET50_FPN_MODELS[spec.model](backbone, num_classes=num_classes, **kwargs)


def _accepted_model_kwargs(model: torch.nn.Module, builder_name: str) -> set[str]:
    """Every keyword the builder, the model class (and its bases) and its input transform take by name.
    torchvision forwards unknown keywords to the transform, which swallows them silently."""
    functions = [torchvision.models.get_model_builder(builder_name)]
    functions += [vars(cls)["__init__"] for cls in type(model).__mro__ if "__init__" in vars(cls)]
    if hasattr(model, "transform"):
        functions.append(type(model.transform).__init__)
    names = {
        name for f in functions for name, p in inspect.signature(f).parameters.items() if p.kind is not p.VAR_KEYWORD
    }
    return names - {"self"}


def build_model_or_explain(spec: ModelSpec, num_classes: int, **build_options) -> torch.nn.Module:
    """build_model, with a UsageError naming the flags when the builder refuses them or silently ignores one."""
    try:
        model = build_model(spec, num_classes, **build_options)
    except TypeError as e:
        raise utils.UsageError(
            f"{spec.model} does not take {spec.builder_kwargs() or 'its arguments'} ({e}); drop or fix these flags"
        ) from None
    unknown = sorted(set(dict(spec.model_kwargs)) - _accepted_model_kwargs(model, spec.model))
    if unknown:
        raise utils.UsageError(f"--model-kwargs: {spec.model} has no argument {', '.join(unknown)}; check the spelling")
    return model


def iou_types_of(model: torch.nn.Module) -> list[str]:
    """What a torchvision detection model predicts: boxes always, masks and keypoints by model class."""
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    iou_types = ["bbox"]
    if isinstance(model, MaskRCNN):
        iou_types.append("segm")
    if isinstance(model, KeypointRCNN):
        iou_types.append("keypoints")
    return iou_types


# ----------------------------------------------------------------------------- weights


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
            f"it was trained for num_classes={saved} and this dataset needs {needed} (labels and the background; "
            "see --label-mapping)"
        )
        misshapen = [k for k in misshapen if not k.startswith(CLASS_DEPENDENT_PREFIXES)]
    problems += [
        f"{len(keys)} {what} keys ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    advice = (
        "was it saved from another --model?"
        if missing or unexpected or misshapen
        else "use one trained on the same categories"
    )
    return "; ".join(problems + [advice])


def load_model_weights(model: torch.nn.Module, state: dict, path: str, flag: str) -> None:
    """Load a whole-model state dict into `model`; a file that does not fit is named with its keys."""
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DistributedDataParallel wrapper
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise utils.UsageError(
            f"{flag}: {path} does not fit {type(model).__name__}: {_mismatch(model, state)}"
        ) from None


def model_from_checkpoint(checkpoint: Checkpoint, path: str, flag: str) -> tuple[torch.nn.Module, Classes]:
    """The model a train.py checkpoint holds, built from its recorded flags, and its classes."""
    if not checkpoint.args or checkpoint.classes is None:
        raise utils.UsageError(
            f"{flag}: {path} does not say which model and classes it holds; pass a checkpoint.pth or "
            "model_{epoch}.pth written by this version of train.py"
        )
    classes = checkpoint.classes
    num_keypoints = len(classes.keypoint_names) or None
    model = build_model(
        ModelSpec.from_args(checkpoint.args), classes.num_classes, num_keypoints=num_keypoints, whole_model_weights=True
    )
    load_model_weights(model, checkpoint.model, path, flag)
    return model, classes

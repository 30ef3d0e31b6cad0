"""Building detection models: the model and its backbone from flags, weights loaded (or fine-tuned to new classes)
with a diagnosis of what does not fit, and a trained model back from any weights file.

    spec = ModelSpec.from_args(args)                 # --model, --min-size, --max-size, --model-kwargs, ...
    model = build_model(spec, num_classes, backbone=load_backbone(args))
    load_model_weights(model, spec, checkpoint.model, path, "--weights", new_classes=True)
    model, classes = model_from_checkpoint(checkpoint, path, "--checkpoint")   # what predict.py does

Every model is built by torchvision's own builder. With trained weights (an ImageNet backbone, or
whole-model weights to be loaded next) it is built as torchvision builds it for them: frozen
BatchNorm and 3 trainable backbone stages (the builder's defaults); from scratch, trainable
BatchNorm everywhere. Backbone files are read here, with weights_only, and handed to the builder;
nothing is ever downloaded.
"""

import argparse
import contextlib
import inspect
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models import WeightsEnum
from torchvision.models.detection import KeypointRCNN, MaskRCNN

import errors
import weights
from checkpoint import Checkpoint, load_file, read_model_file
from labels import Classes

DEFAULT_MODEL = "maskrcnn_resnet50_fpn"
BACKBONE_NAMES = {"ResNet50_Weights": "ResNet-50", "MobileNet_V3_Large_Weights": "MobileNetV3-Large"}
CLASSIFIER_PREFIXES = ("fc.", "classifier.")  # an ImageNet classifier's head, which detection backbones drop


@dataclass
class ModelSpec:
    """What a model is built from: train.py's model flags, as its checkpoints record them in `args`."""

    model: str = DEFAULT_MODEL
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


def check_model_name(name: str) -> None:
    """A UsageError for a --model that is not one of torchvision's detection models (train.py's and predict.py's)."""
    detection_models = torchvision.models.list_models(module=torchvision.models.detection)
    if name not in detection_models:
        raise errors.UsageError(f"--model: unknown model {name!r}; choose one of {', '.join(sorted(detection_models))}")


# ----------------------------------------------------------------------------- the backbone


@dataclass
class Backbone:
    """ImageNet weights for a model's backbone: the torchvision weights they stand in for, and the state dict."""

    enum: WeightsEnum
    state: dict[str, torch.Tensor]


def backbone_weights_class(model_name: str) -> type[WeightsEnum] | None:
    """The weights enum a detection builder takes as weights_backbone (ResNet50_Weights for the R-CNNs)."""
    parameter = inspect.signature(torchvision.models.get_model_builder(model_name)).parameters.get("weights_backbone")
    if parameter is None:
        return None
    return next(
        (t for t in typing.get_args(parameter.annotation) if isinstance(t, type) and issubclass(t, WeightsEnum)), None
    )


def _default_backbone_weights(model_name: str, enum_class: type[WeightsEnum]) -> WeightsEnum:
    default = inspect.signature(torchvision.models.get_model_builder(model_name)).parameters["weights_backbone"].default
    return default if isinstance(default, enum_class) else enum_class["IMAGENET1K_V1"]


def _backbone_name(enum_class: type[WeightsEnum]) -> str:
    return BACKBONE_NAMES.get(enum_class.__name__, enum_class.__name__.removesuffix("_Weights"))


def _download_hint(model_name: str, enum_class: type[WeightsEnum]) -> str:
    default = _default_backbone_weights(model_name, enum_class)
    if enum_class is torchvision.models.ResNet50_Weights:
        return (
            "download torchvision's ImageNet ResNet-50 (resnet50-0676ba61.pth) and save it there as resnet50.pth, "
            "pass --weights-backbone PATH, or --weights-backbone none to train from scratch"
        )
    return (
        f"pass --weights-backbone {default} (torchvision's {weights.file_name(default)}, read from "
        f"{weights.hub_checkpoints()}) or the file's path, or --weights-backbone none to train from scratch"
    )


def whole_model_weights_follow(args: argparse.Namespace) -> bool:
    """Whether whole-model weights are loaded into the model once built: --weights, or the model --test-only
    evaluates from --resume."""
    return args.weights is not None or bool(args.test_only and args.resume)


def built_as_trained(args: argparse.Namespace, resumed: Checkpoint | None) -> bool:
    """Whether the model is built as torchvision builds it with trained weights (frozen BatchNorm, the builder's
    trainable stages) without a backbone file to read: whole-model weights come next, or the run being resumed
    started from trained weights (its backbone values are in the checkpoint)."""
    if whole_model_weights_follow(args):
        return True
    if resumed is None:
        return False
    backbone = args.weights_backbone  # None: the default file, <data-path>/resnet50.pth, which the run read
    return resumed.args.get("weights") is not None or backbone is None or str(backbone).lower() != "none"


def backbone_weights_path(args: argparse.Namespace) -> str | None:
    """The backbone weights to read (a path or a torchvision enum name), or None to start from random weights."""
    if args.weights_backbone is not None and args.weights_backbone.lower() == "none":
        return None
    if whole_model_weights_follow(args):
        return None  # the whole model's weights replace the backbone's anyway
    return args.weights_backbone or str(args.data_path).rstrip("/") + "/resnet50.pth"


def _classifier_template(enum: WeightsEnum) -> dict[str, torch.Tensor]:
    """Zeros shaped as the state dict of the ImageNet classifier whose backbone `enum` holds: what the builder
    loads before it drops the classifier's head (shapes from a build on the meta device: VGG16's head alone has
    120M parameters, not worth initialising)."""
    categories = enum.meta.get("categories")
    options = {} if categories is None else {"num_classes": len(categories)}
    with torch.device("meta"):
        shapes = torchvision.models.get_model(weights.classifier_builder(type(enum)), weights=None, **options)
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in shapes.state_dict().items()}


def load_backbone(args: argparse.Namespace) -> Backbone | None:
    """The backbone weights the flags ask for, checked key by key and shape by shape (read up front, so that a wrong
    file stops the run at once)."""
    value = backbone_weights_path(args)
    if value is None:
        return None
    enum_class = backbone_weights_class(args.model)
    if enum_class is None:
        raise errors.UsageError(f"--weights-backbone: {args.model} has no ImageNet backbone to read; pass none")
    name = _backbone_name(enum_class)
    if args.weights_backbone is None and enum_class is not torchvision.models.ResNet50_Weights:
        raise errors.UsageError(
            f"--weights-backbone: {args.model} has a {name} backbone; {_download_hint(args.model, enum_class)}"
        )
    found = weights.resolve(value, "--weights-backbone")
    if found.enum is not None and not isinstance(found.enum, enum_class):
        raise errors.UsageError(
            f"--weights-backbone: {found.name} holds {type(found.enum).__name__}, but {args.model} has a {name} "
            f"backbone; pass {enum_class.__name__} weights"
        )
    if not found.path.is_file():
        raise errors.UsageError(
            f"--weights-backbone: no {name} weights at {found.path}; {_download_hint(args.model, enum_class)}"
        )
    enum = found.enum or _default_backbone_weights(args.model, enum_class)
    return Backbone(enum, _checked_backbone_state(found.path, enum, name, _download_hint(args.model, enum_class)))


def _checked_backbone_state(path, enum: WeightsEnum, name: str, hint: str) -> dict[str, torch.Tensor]:
    """The classifier state dict the builder loads: the file's tensors, with a fresh head where the file has none."""
    state = load_file(path, f"{name} state dict", "--weights-backbone")
    if not isinstance(state, dict):
        raise errors.UsageError(
            f"--weights-backbone: {path} holds a {type(state).__name__}, not a {name} state dict; {hint}"
        )
    served = _classifier_template(enum)
    expected = {k: v for k, v in served.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    missing = [k for k in expected if k not in state]
    misshapen = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or misshapen:
        problems = [
            f"{len(missing)} missing keys ({', '.join(missing[:3])}...)" if missing else "",
            f"wrong shapes for {', '.join(misshapen[:3])}" if misshapen else "",
        ]
        details = "; ".join(p for p in problems if p)
        raise errors.UsageError(
            f"--weights-backbone: {path} is not a torchvision {name} state dict ({details}); {hint}"
        )
    served.update({k: state[k] for k in served if k in state and state[k].shape == served[k].shape})
    return served


@contextlib.contextmanager
def _serving(backbone: Backbone) -> Iterator[None]:
    """torchvision's builders take backbone weights only as an enum whose file they fetch themselves (downloading it,
    and unpickling it without weights_only). Within this block that fetch returns the state dict read here instead."""
    api = torchvision.models._api
    fetch = api.load_state_dict_from_url

    def serve(url: str, *args, **kwargs) -> dict[str, torch.Tensor]:
        if url != backbone.enum.url:
            raise RuntimeError(f"a model builder asked for {url}; only {backbone.enum} is served")
        return backbone.state

    api.load_state_dict_from_url = serve
    try:
        yield
    finally:
        api.load_state_dict_from_url = fetch


# ----------------------------------------------------------------------------- the model


def build_model(
    spec: ModelSpec,
    num_classes: int,
    backbone: Backbone | None = None,
    num_keypoints: int | None = None,
    whole_model_weights: bool = False,
) -> torch.nn.Module:
    """The detection model, built by torchvision's builder as it builds it with trained weights (an ImageNet
    `backbone`, or `whole_model_weights` to be loaded next: --weights, --test-only --resume): frozen BatchNorm and
    the builder's trainable stages; from scratch, trainable BatchNorm everywhere. A keypoint model predicts
    `num_keypoints` (the dataset's)."""
    kwargs = spec.builder_kwargs()
    if num_keypoints is not None and spec.model.startswith("keypointrcnn"):
        kwargs.setdefault("num_keypoints", num_keypoints)
    if spec.trainable_backbone_layers is not None:
        kwargs["trainable_backbone_layers"] = spec.trainable_backbone_layers
    enum_class = backbone_weights_class(spec.model)
    if (backbone is None and not whole_model_weights) or enum_class is None:
        return torchvision.models.get_model(
            spec.model, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
        )
    if backbone is None:  # its values are replaced by the whole model's weights next
        enum = _default_backbone_weights(spec.model, enum_class)
        backbone = Backbone(enum, _classifier_template(enum))
    with _serving(backbone):
        return torchvision.models.get_model(
            spec.model, weights=None, weights_backbone=backbone.enum, num_classes=num_classes, **kwargs
        )


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
    except (TypeError, ValueError) as e:
        raise errors.UsageError(
            f"{spec.model} does not take {spec.builder_kwargs() or 'its arguments'} ({e}); drop or fix these flags"
        ) from None
    unknown = sorted(set(dict(spec.model_kwargs)) - _accepted_model_kwargs(model, spec.model))
    if unknown:
        raise errors.UsageError(
            f"--model-kwargs: {spec.model} has no argument {', '.join(unknown)}; check the spelling"
        )
    return model


def iou_types_of(model: torch.nn.Module) -> list[str]:
    """What a torchvision detection model predicts: boxes always, masks and keypoints by model class (a deployed
    model, deployed.OnnxModel, says it)."""
    if hasattr(model, "iou_types"):
        return list(model.iou_types)
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    iou_types = ["bbox"]
    if isinstance(model, MaskRCNN):
        iou_types.append("segm")
    if isinstance(model, KeypointRCNN):
        iou_types.append("keypoints")
    return iou_types


# ----------------------------------------------------------------------------- what depends on the classes


def _shapes(spec: ModelSpec, num_classes: int, num_keypoints: int | None) -> dict[str, torch.Size]:
    """The model's tensor shapes, from a build on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        model = build_model(replace(spec, trainable_backbone_layers=None), num_classes, num_keypoints=num_keypoints)
    return {k: v.shape for k, v in model.state_dict().items()}


_DEPENDENT_KEYS: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}  # measured once per model spec


def dependent_keys(spec: ModelSpec, on: str) -> dict[str, tuple[int, int]]:
    """The tensors whose first dimension grows with the number of classes (`on` "classes") or keypoints
    ("keypoints"): key -> (a, b) with that dimension a * count + b. Measured by building the model twice on the
    meta device with two counts."""
    if on == "keypoints" and not spec.model.startswith("keypointrcnn"):
        return {}
    cache_key = (repr(spec), on)
    if cache_key not in _DEPENDENT_KEYS:
        counts = (17, 18) if on == "keypoints" else (2, 3)
        first, second = (_shapes(spec, 2, n) if on == "keypoints" else _shapes(spec, n, None) for n in counts)
        steps = {key: second[key][0] - shape[0] for key, shape in first.items() if second[key] != shape}
        _DEPENDENT_KEYS[cache_key] = {key: (step, first[key][0] - step * counts[0]) for key, step in steps.items()}
    return _DEPENDENT_KEYS[cache_key]


def count_in(state: Mapping[str, torch.Tensor], dependent: dict[str, tuple[int, int]]) -> int | None:
    """The number of classes (or keypoints) a state dict was trained for, from its first dependent tensor."""
    state = _without_ddp_prefix(dict(state))
    for key, (step, offset) in dependent.items():
        if key in state and hasattr(state[key], "shape"):
            return (state[key].shape[0] - offset) // step
    return None


def num_classes_in(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> int | None:
    """The number of classes (the background included) a `spec.model` state dict was trained for."""
    return count_in(state, dependent_keys(spec, "classes"))


def classes_of_file(spec: ModelSpec, state: Mapping[str, torch.Tensor], found: weights.WeightsFile | None) -> Classes:
    """What the labels of a file that does not say (a torchvision state dict, a reference checkpoint) mean: the
    category ids themselves, as torchvision's COCO models have them, named by torchvision's metadata when the file
    is one of its weights, or has as many classes as the model's COCO weights."""
    num_classes = count_in(state, dependent_keys(spec, "classes"))
    if num_classes is None:
        raise ValueError("no classifier tensor")
    names = found.categories if found is not None and found.categories else None
    coco = [
        w
        for w in torchvision.models.get_model_weights(spec.model)
        if len(w.meta.get("categories") or []) == num_classes
    ]
    if names is None and coco:
        names = coco[0].meta["categories"]
    categories = [
        {"id": label, "name": name}
        for label, name in enumerate(names or [str(label) for label in range(num_classes)])
        if label and name != "N/A"
    ]
    keypoint_names = []
    if spec.model.startswith("keypointrcnn"):
        count = count_in(state, dependent_keys(spec, "keypoints"))
        known = (found.enum.meta.get("keypoint_names") if found is not None and found.enum is not None else None) or []
        keypoint_names = list(known) if len(known) == count else [f"keypoint {i + 1}" for i in range(count or 0)]
    return Classes(list(range(num_classes)), categories, keypoint_names)


# ----------------------------------------------------------------------------- weights


def _without_ddp_prefix(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DistributedDataParallel wrapper
    return state


def _differences(model: torch.nn.Module, state: dict) -> tuple[list[str], list[str], list[str]]:
    """The missing, unexpected and misshapen keys of `state` for `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    # FrozenBatchNorm2d drops the num_batches_tracked of trainable BatchNorm when loading: not a mismatch.
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    misshapen = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    return missing, unexpected, misshapen


def _layers(keys: list[str]) -> list[str]:
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))


def _mismatch(model: torch.nn.Module, spec: ModelSpec, state: dict, new_classes: bool) -> str:
    """What keeps `state` from loading into `model`, in words: a num_classes mismatch, then missing, unexpected and
    misshapen keys."""
    missing, unexpected, misshapen = _differences(model, state)
    class_keys = dependent_keys(spec, "classes")
    problems = []
    if any(k in class_keys for k in misshapen):
        saved, needed = count_in(state, class_keys), count_in(model.state_dict(), class_keys)
        problems.append(
            f"it was trained for num_classes={saved} and this dataset needs {needed} (labels and the background; "
            "see --label-mapping)"
        )
        misshapen = [k for k in misshapen if k not in class_keys]
    problems += [
        f"{len(keys)} {what} keys ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    if missing or unexpected or misshapen:
        advice = "was it saved from another --model?"
    elif new_classes:
        advice = "fine-tune with --weights to give it new class layers"
    else:
        advice = "use one trained on the same categories, or fine-tune it to these with --weights"
    return "; ".join(problems + [advice])


def load_model_weights(
    model: torch.nn.Module, spec: ModelSpec, state: dict, path: str, flag: str, new_classes: bool = False
) -> list[str]:
    """Load a whole-model state dict into `model`, every tensor strictly. With `new_classes` (fine-tuning), layers
    that depend on the number of classes (or keypoints) and whose shapes differ keep the initialisation the model
    builder gave them; returns their names. Anything else that does not fit is a UsageError naming the keys."""
    state = _without_ddp_prefix(state)
    missing, unexpected, misshapen = _differences(model, state)
    dependent = dependent_keys(spec, "classes") | dependent_keys(spec, "keypoints")
    if not (missing or unexpected or misshapen):
        model.load_state_dict(state)
        return []
    # A layer is re-initialised whole: if its weight does not fit, neither does its bias.
    fits_new_heads = not missing and not unexpected and misshapen and all(k in dependent for k in misshapen)
    if new_classes and fits_new_heads:
        kept = {k: v for k, v in state.items() if k not in set(misshapen)}
        result = model.load_state_dict(kept, strict=False)
        assert sorted(result.missing_keys) == sorted(misshapen) and not result.unexpected_keys, result
        return _layers(misshapen)
    raise errors.UsageError(
        f"{flag}: {path} does not fit {type(model).__name__}: {_mismatch(model, spec, state, new_classes)}"
    )


def descends_from_legacy_weights(path: str | Path, checkpoint: Checkpoint) -> bool:
    """Whether weights are (or were fine-tuned from) torchvision's legacy COCO weights, whose FrozenBatchNorm eps is
    0, as torchvision's builder sets it for them: the file itself, or the --weights its run recorded."""
    recorded = checkpoint.args.get("weights")
    return weights.identify(str(path)).legacy_eps or bool(recorded and weights.identify(str(recorded)).legacy_eps)


def load_whole_model(
    model: torch.nn.Module, spec: ModelSpec, checkpoint: Checkpoint, path: str | Path, flag: str,
    new_classes: bool = False,
) -> list[str]:  # fmt: skip
    """Whole-model weights into `model`: the one path for --weights, --resume, --test-only and predict.py. Loads
    strictly (load_model_weights; with `new_classes`, fine-tuning) and gives a model that descends from torchvision's
    legacy weights their eps. Returns the re-initialised layers (fine-tuning)."""
    new = load_model_weights(model, spec, checkpoint.model, str(path), flag, new_classes)
    if descends_from_legacy_weights(path, checkpoint):
        weights.overwrite_eps(model, 0.0)
    return new


def model_from_checkpoint(
    checkpoint: Checkpoint, path: str, flag: str, model_name: str | None = None
) -> tuple[torch.nn.Module, Classes]:
    """The model a weights file holds, and its classes: a train.py checkpoint builds the model its flags recorded; a
    file that records no model (a torchvision state dict) builds `model_name` (default maskrcnn_resnet50_fpn)."""
    spec = (
        ModelSpec.from_args(checkpoint.args) if checkpoint.args.get("model") else ModelSpec(model_name or DEFAULT_MODEL)
    )
    found = weights.identify(str(path))
    try:
        classes = checkpoint.classes or classes_of_file(spec, _without_ddp_prefix(checkpoint.model), found)
    except ValueError:
        raise errors.UsageError(
            f"{flag}: {path} holds no {spec.model} weights (no classifier tensor); pass --model with its architecture, "
            "or a checkpoint.pth written by train.py"
        ) from None
    model = build_model(
        spec, classes.num_classes, num_keypoints=len(classes.keypoint_names) or None, whole_model_weights=True
    )
    load_whole_model(model, spec, checkpoint, path, flag)
    return model, classes


def load_trained_model(
    value: str, device: torch.device, model_name: str | None = None, flag: str = "--checkpoint"
) -> tuple[torch.nn.Module, Classes]:
    """The model a weights file (or torchvision enum) holds, in eval mode, and its classes (label_to_category_id,
    categories, keypoints); `model_name` builds a file that records no model (predict.py, export.py)."""
    model, classes, _ = trained_model_named(value, device, model_name, flag)
    return model, classes


def trained_model_named(
    value: str, device: torch.device, model_name: str | None = None, flag: str = "--checkpoint"
) -> tuple[torch.nn.Module, Classes, str]:
    """As load_trained_model, with the architecture's builder name (what --model calls it)."""
    path = weights.resolve(value, flag).path
    checkpoint = read_model_file(path, flag)
    model, classes = model_from_checkpoint(checkpoint, path, flag, model_name)
    name = checkpoint.args.get("model") or model_name or DEFAULT_MODEL
    return model.to(device).eval(), classes, name

"""torchvision's weights, offline: enum names and file names to files in torch hub's cache, and what such a file is.

Upstream's command lines name weights by enum (`--weights-backbone ResNet50_Weights.IMAGENET1K_V1`,
`--weights MaskRCNN_ResNet50_FPN_Weights.COCO_V1`); torchvision would download them into
`$TORCH_HOME/hub/checkpoints/`. Here an enum name stands for that file, which must be there already
(cluster nodes often have the cache filled): nothing is ever downloaded. A file whose name is one of
torchvision's weight files (`maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth`) is known by that name too, wherever
it lies: its categories come from torchvision's own metadata, and a legacy COCO file gets what torchvision's
builder gives it (FrozenBatchNorm eps 0, how the published 37.9 / 34.6 were measured).
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.models import WeightsEnum

from errors import UsageError

ENUM_NAME = re.compile(r"[A-Za-z0-9_]+_Weights\.[A-Za-z0-9_]+")
# The weights for which torchvision's builders call overwrite_eps(model, 0.0): trained with an older FrozenBatchNorm.
LEGACY_EPS_WEIGHTS = {
    "FasterRCNN_ResNet50_FPN_Weights.COCO_V1",
    "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
    "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1",
    "RetinaNet_ResNet50_FPN_Weights.COCO_V1",
}


def file_name(enum: WeightsEnum) -> str:
    """The name torchvision saves the enum's file under (the last part of its url)."""
    return enum.url.rsplit("/", 1)[-1]


@functools.cache
def _enums_by_file_name() -> dict[str, WeightsEnum]:
    known = {}
    for model in torchvision.models.list_models():
        for enum in torchvision.models.get_model_weights(model):
            known.setdefault(file_name(enum), enum)
    return known


def hub_checkpoints() -> Path:
    """Where torchvision keeps the weights it downloads ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


@dataclass(frozen=True)
class WeightsFile:
    """A weights file, and the torchvision weights it is (by its name), if any."""

    path: Path
    enum: WeightsEnum | None = None

    @property
    def name(self) -> str:
        return str(self.enum) if self.enum is not None else str(self.path)

    @property
    def categories(self) -> list[str] | None:
        """The name of each label, from torchvision's metadata ("__background__" and "N/A" included)."""
        return None if self.enum is None else self.enum.meta.get("categories")

    @property
    def legacy_eps(self) -> bool:
        return self.enum is not None and str(self.enum) in LEGACY_EPS_WEIGHTS


def _enum_named(value: str, flag: str) -> WeightsEnum | None:
    if not ENUM_NAME.fullmatch(value):
        return None
    try:
        return torchvision.models.get_weight(value)
    except (KeyError, ValueError, AttributeError):
        raise UsageError(
            f"{flag}: {value} is not one of torchvision's weights (e.g. ResNet50_Weights.IMAGENET1K_V1, "
            "MaskRCNN_ResNet50_FPN_Weights.COCO_V1); check the spelling, or pass a file path"
        ) from None


def identify(value: str) -> WeightsFile:
    """What `value` (an enum name, or a path whose file name may be torchvision's) stands for; no file is read."""
    try:
        enum = _enum_named(value, "")
    except UsageError:
        enum = None
    if enum is not None:
        return WeightsFile(hub_checkpoints() / file_name(enum), enum)
    path = Path(value)
    return WeightsFile(path, _enums_by_file_name().get(path.name))


def resolve(value: str, flag: str) -> WeightsFile:
    """A weights path or enum name as a file that is there; an enum whose file is not in the cache is one line
    naming the file and the folder (nothing is downloaded)."""
    enum = _enum_named(value, flag)
    if enum is None:
        return identify(value)
    path = hub_checkpoints() / file_name(enum)
    if not path.is_file():
        raise UsageError(
            f"{flag}: {value} is torchvision's {file_name(enum)}, which is not in {path.parent} (nothing is "
            f"downloaded); put it there (from {enum.url}), or set TORCH_HOME to the folder whose hub/checkpoints "
            "holds it, or pass the file's path"
        )
    return WeightsFile(path, enum)


def classifier_builder(enum_class: type[WeightsEnum]) -> str:
    """The classification model whose weights `enum_class` holds (ResNet50_Weights: resnet50)."""
    for model in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(model) is enum_class:
            return model
    raise ValueError(f"no classification model has {enum_class.__name__}")


def overwrite_eps(model: torch.nn.Module, eps: float = 0.0) -> None:
    """Set every FrozenBatchNorm2d's eps, as torchvision's builders do for the legacy COCO weights (their own
    helper is private to torchvision.models.detection)."""
    for module in model.modules():
        if isinstance(module, torchvision.ops.misc.FrozenBatchNorm2d):
            module.eps = eps

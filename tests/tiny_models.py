"""The tests' small models: Faster R-CNN, Mask R-CNN and Keypoint R-CNN on a narrow ResNet with an FPN of 32 channels
and small heads (about 0.5-0.6M parameters, a 2.5 MB model against maskrcnn_resnet50_fpn's 170 MB), registered in
torchvision's model registry, so that train.py and predict.py build them with --model like any of torchvision's.

Built the way torchvision builds its R-CNNs for trained weights: torchvision's MaskRCNN / KeypointRCNN classes, its
BasicBlock, BackboneWithFPN and FrozenBatchNorm2d, the builder's trainable stages (3 by default). The frozen
BatchNorm statistics are calibrated on a few normalised random batches, as a stand-in for ImageNet weights (plain
statistics of 0 and 1 turn losses NaN), and the residual branches start at zero. Nothing is read from a file: pass
--weights-backbone none.

Tests import this module (conftest.py does); a child process gets the models by running a script through it:

    python tests/tiny_models.py train.py --model maskrcnn_tiny_fpn --weights-backbone none ...
    torchrun --nproc_per_node=2 tests/tiny_models.py train.py --model maskrcnn_tiny_fpn ...
"""

import os
import runpy
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.detection import FasterRCNN, KeypointRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock, conv1x1
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

WIDTHS = (16, 32, 64, 128)  # the four stages' channels (ResNet-18's are 64 to 512)
FPN_CHANNELS = 32
REPRESENTATION = 64  # the box head's (torchvision's: 1024)
MASK_CHANNELS = 64  # the mask head's four convolutions (torchvision's: 256)
STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")  # trained first to last, as torchvision's builders count
CALIBRATION_BATCHES = 3
# Seconds each training forward pass waits, for the tests that signal a run at a printed iteration: a tiny model's
# step (about 0.05 s) is shorter than the time to see the line and send the signal. The numbers stay the same.
STEP_SECONDS = float(os.environ.get("TINY_MODEL_STEP_SECONDS", "0"))


class TinyWeights(WeightsEnum):
    """None: the registry expects each builder to name its weights enum (weights.py looks through them all)."""


def _stage(in_channels: int, channels: int, stride: int) -> BasicBlock:
    downsample = None
    if stride != 1 or in_channels != channels:
        downsample = nn.Sequential(conv1x1(in_channels, channels, stride), nn.BatchNorm2d(channels))
    block = BasicBlock(in_channels, channels, stride, downsample)
    nn.init.zeros_(block.bn2.weight)  # zero_init_residual: each block starts as the identity
    return block


def _frozen(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced by a FrozenBatchNorm2d holding its statistics and affine values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _frozen(child)
    return module


def narrow_resnet() -> nn.Module:
    """The backbone body: conv1 and four one-block stages, BatchNorm calibrated on normalised random batches, then
    frozen. Deterministic for a given torch seed; the calibration images come from a generator of their own."""
    channels = [WIDTHS[0], *WIDTHS]
    layers = [(f"layer{i + 1}", _stage(channels[i], channels[i + 1], 1 if i == 0 else 2)) for i in range(4)]
    body = nn.Sequential(
        OrderedDict(
            [("conv1", nn.Conv2d(3, WIDTHS[0], 7, 2, 3, bias=False)), ("bn1", nn.BatchNorm2d(WIDTHS[0])),
             ("relu", nn.ReLU(inplace=True)), ("maxpool", nn.MaxPool2d(3, 2, 1)), *layers]
        )
    )  # fmt: skip
    for module in body.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    if body.conv1.weight.is_meta:  # a build for shapes only (models.dependent_keys): nothing to calibrate
        return _frozen(body)
    generator = torch.Generator().manual_seed(0)
    body.train()
    with torch.no_grad():
        for _ in range(CALIBRATION_BATCHES):
            body(torch.randn(4, 3, 64, 64, generator=generator))
    return _frozen(body)


def _backbone(trainable_backbone_layers: int | None) -> BackboneWithFPN:
    body = narrow_resnet()
    trainable = 3 if trainable_backbone_layers is None else trainable_backbone_layers
    if not 0 <= trainable <= len(STAGES):
        raise ValueError(f"Trainable layers should be in the range [0,{len(STAGES)}], got {trainable}")
    for name, parameter in body.named_parameters():
        parameter.requires_grad_(name.startswith(STAGES[:trainable]))
    return_layers = {f"layer{i + 1}": str(i) for i in range(4)}
    return BackboneWithFPN(body, return_layers, list(WIDTHS), FPN_CHANNELS, extra_blocks=LastLevelMaxPool())


def _paced(model: nn.Module) -> nn.Module:
    if STEP_SECONDS > 0:
        model.register_forward_pre_hook(lambda module, inputs: time.sleep(STEP_SECONDS) if module.training else None)
    return model


def _box_heads(num_classes: int) -> dict:
    return {
        "box_head": TwoMLPHead(FPN_CHANNELS * 7 * 7, REPRESENTATION),
        "box_predictor": FastRCNNPredictor(REPRESENTATION, num_classes),
    }


def fasterrcnn_tiny_fpn(
    *, weights: TinyWeights | None = None, weights_backbone=None, num_classes: int | None = None,
    trainable_backbone_layers: int | None = None, **kwargs,
) -> FasterRCNN:  # fmt: skip
    """Faster R-CNN (boxes only) on the narrow ResNet."""
    return _paced(FasterRCNN(_backbone(trainable_backbone_layers), None, **_box_heads(num_classes or 91), **kwargs))


def maskrcnn_tiny_fpn(
    *, weights: TinyWeights | None = None, weights_backbone=None, num_classes: int | None = None,
    trainable_backbone_layers: int | None = None, **kwargs,
) -> MaskRCNN:  # fmt: skip
    """Mask R-CNN on the narrow ResNet (`weights` and `weights_backbone` are not read: there are none)."""
    return _paced(MaskRCNN(
        _backbone(trainable_backbone_layers), num_classes=None, **_box_heads(num_classes or 91),
        mask_head=MaskRCNNHeads(FPN_CHANNELS, [MASK_CHANNELS] * 4, 1),
        mask_predictor=MaskRCNNPredictor(MASK_CHANNELS, MASK_CHANNELS, num_classes or 91), **kwargs,
    ))  # fmt: skip


def keypointrcnn_tiny_fpn(
    *, weights: TinyWeights | None = None, weights_backbone=None, num_classes: int | None = None,
    num_keypoints: int | None = None,
    trainable_backbone_layers: int | None = None, **kwargs,
) -> KeypointRCNN:  # fmt: skip
    """Keypoint R-CNN on the narrow ResNet."""
    return _paced(KeypointRCNN(
        _backbone(trainable_backbone_layers), num_classes=None, **_box_heads(num_classes or 2),
        keypoint_head=KeypointRCNNHeads(FPN_CHANNELS, [FPN_CHANNELS, FPN_CHANNELS]),
        keypoint_predictor=KeypointRCNNPredictor(FPN_CHANNELS, num_keypoints or 17), **kwargs,
    ))  # fmt: skip


def _register(builder: Callable) -> None:
    # list_models(module=torchvision.models.detection), which train.py and predict.py check --model against, lists
    # the builders whose module is inside torchvision.models.detection.
    builder.__module__ = "torchvision.models.detection.tiny"
    if builder.__name__ not in torchvision.models.list_models():
        torchvision.models._api.register_model()(builder)  # the registry behind get_model and list_models


for _builder in (fasterrcnn_tiny_fpn, maskrcnn_tiny_fpn, keypointrcnn_tiny_fpn):
    _register(_builder)

if __name__ == "__main__":  # python tests/tiny_models.py SCRIPT ARGS...: run SCRIPT with the tiny models registered
    script = Path(sys.argv[1]).resolve()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")

"""models.py: the local ResNet-50 backbone, models built as torchvision builds them (frozen BatchNorm with trained
weights), model arguments checked, and weight files that do not fit named by their keys."""

import re
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

import models
import train
import utils
from conftest import write_random_resnet50


def _args(*extra: str):
    return train.get_args_parser().parse_args(list(extra))


def _build(args, num_classes: int, backbone_state=None) -> torch.nn.Module:
    """The model train.py builds for these flags."""
    whole_model_weights = args.weights is not None or bool(args.test_only and args.resume)
    spec = models.ModelSpec.from_args(args)
    return models.build_model(spec, num_classes, backbone_state, whole_model_weights=whole_model_weights)


def test_backbone_path_defaults_to_data_path_and_none_means_random(tmp_path):
    assert models.backbone_weights_path(_args("--data-path", str(tmp_path))) == tmp_path / "resnet50.pth"
    assert models.backbone_weights_path(_args("--weights-backbone", "none")) is None
    assert models.backbone_weights_path(_args("--weights-backbone", "x/r.pth")) == Path("x/r.pth")


def test_local_resnet50_is_loaded_into_a_frozen_bn_backbone(tmp_path):
    path = tmp_path / "resnet50.pth"
    state = write_random_resnet50(path)
    args = _args("--data-path", str(tmp_path), "--min-size", "64", "--max-size", "64")
    model = _build(args, num_classes=5, backbone_state=models.load_resnet50_state_dict(path))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    # Three trainable stages by default, as torchvision does with a pretrained backbone.
    assert not body.layer1[0].conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


@pytest.mark.parametrize("content", ["text", "wrong_keys", "wrong_shapes"])
def test_a_file_that_is_not_a_resnet50_is_refused(tmp_path, content):
    path = tmp_path / "resnet50.pth"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "wrong_keys":
        torch.save(torchvision.models.resnet18().state_dict(), path)
    else:
        state = torchvision.models.resnet50().state_dict()
        state["conv1.weight"] = torch.zeros(1)
        torch.save(state, path)
    with pytest.raises(utils.UsageError, match=re.escape(str(path))):
        models.load_resnet50_state_dict(path)


def test_whole_model_weights_get_the_pretrained_architecture(tmp_path):
    """--weights fine-tunes as torchvision does with weights=: frozen BatchNorm, 3 trainable stages."""
    args = _args("--weights", str(tmp_path / "model.pth"), "--min-size", "64", "--max-size", "64")
    model = _build(args, num_classes=3, backbone_state=None)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    scratch = _build(_args("--weights-backbone", "none"), num_classes=3, backbone_state=None)
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in scratch.parameters())
    # A from-scratch model's state dict (with BatchNorm's num_batches_tracked) loads into the frozen one.
    model.load_state_dict(scratch.state_dict())


def test_test_only_resume_builds_the_model_as_whole_model_weights_do(tmp_path):
    """--test-only --resume reads no backbone (the checkpoint replaces it): the model is still built as a trained
    one."""
    flags = ["--min-size", "64", "--max-size", "64", "--trainable-backbone-layers", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # torchvision warns when trainable_backbone_layers goes to a model built from scratch
        model = _build(
            _args("--test-only", "--resume", str(tmp_path / "checkpoint.pth"), *flags), 3, backbone_state=None
        )
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert models.backbone_weights_path(_args("--test-only", "--resume", str(tmp_path / "checkpoint.pth"))) is None


def test_models_without_a_resize_get_no_resize_arguments():
    args = _args("--model", "ssdlite320_mobilenet_v3_large", "--weights-backbone", "none")
    model = models.build_model_or_explain(models.ModelSpec.from_args(args), num_classes=4)
    assert type(model).__name__ == "SSD"
    with pytest.raises(utils.UsageError, match="ssdlite320_mobilenet_v3_large does not take {'min_size': 96}"):
        spec = models.ModelSpec.from_args(_args("--model", "ssdlite320_mobilenet_v3_large", "--min-size", "96"))
        models.build_model_or_explain(spec, 4)


def test_weights_saved_from_a_ddp_wrapper_load(tmp_path):
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    wrapped = {f"module.{k}": v + 1 for k, v in model.state_dict().items() if v.is_floating_point()}
    wrapped |= {f"module.{k}": v for k, v in model.state_dict().items() if not v.is_floating_point()}
    models.load_model_weights(model, wrapped, "ddp.pth", "--weights")
    assert all(torch.equal(v, wrapped[f"module.{k}"]) for k, v in model.state_dict().items())


def test_iou_types_follow_the_model_class():
    mask_rcnn = torchvision.models.get_model(
        "maskrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    assert models.iou_types_of(mask_rcnn) == ["bbox", "segm"]
    faster = torchvision.models.get_model("fasterrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=3)
    assert models.iou_types_of(faster) == ["bbox"]

"""models.py: the local ResNet-50 backbone, models built as torchvision builds them (frozen BatchNorm with trained
weights), model arguments checked, and weight files that do not fit named by their keys."""

import os
import re
import warnings

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

import errors
import models
import train


def _args(*extra: str):
    return train.get_args_parser().parse_args(list(extra))


def _build(args, num_classes: int, backbone=None) -> torch.nn.Module:
    """The model train.py builds for these flags."""
    whole_model_weights = args.weights is not None or bool(args.test_only and args.resume)
    spec = models.ModelSpec.from_args(args)
    return models.build_model(spec, num_classes, backbone, whole_model_weights=whole_model_weights)


def test_backbone_path_defaults_to_data_path_and_none_means_random(tmp_path):
    assert models.backbone_weights_path(_args("--data-path", str(tmp_path))) == str(tmp_path / "resnet50.pth")
    assert models.backbone_weights_path(_args("--weights-backbone", "none")) is None
    assert models.backbone_weights_path(_args("--weights-backbone", "x/r.pth")) == "x/r.pth"


def test_local_resnet50_is_loaded_into_a_frozen_bn_backbone(standin_resnet50):
    state = torch.load(standin_resnet50, weights_only=True)
    args = _args("--data-path", str(standin_resnet50.parent), "--min-size", "64", "--max-size", "64")
    model = _build(args, num_classes=5, backbone=models.load_backbone(args))
    body = model.backbone.body
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    # Three trainable stages by default, as torchvision does with a pretrained backbone.
    assert not body.layer1[0].conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


@pytest.mark.parametrize(
    "content, reason", [("text", ""), ("wrong_keys", "198 missing keys"), ("wrong_shapes", "(wrong shapes for conv1")]
)
def test_a_file_that_is_not_a_resnet50_is_refused(tmp_path, content, reason):
    path = tmp_path / "resnet50.pth"
    if content == "text":
        path.write_text("not a checkpoint")
    else:  # ResNet-18's names, or ResNet-50's: one number each (names and shapes are checked, not values)
        names = (torchvision.models.resnet18 if content == "wrong_keys" else torchvision.models.resnet50)().state_dict()
        torch.save({name: torch.zeros(1) for name in names}, path)
    with pytest.raises(errors.UsageError, match=re.escape(f"--weights-backbone: {path}")) as refused:
        models.load_backbone(_args("--weights-backbone", str(path)))
    assert reason in str(refused.value)


def test_whole_model_weights_get_the_pretrained_architecture(tmp_path):
    """--weights fine-tunes as torchvision does with weights=: frozen BatchNorm, 3 trainable stages."""
    args = _args("--weights", str(tmp_path / "model.pth"), "--min-size", "64", "--max-size", "64")
    model = _build(args, num_classes=3)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    scratch = _build(_args("--weights-backbone", "none"), num_classes=3)
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in scratch.parameters())
    # A from-scratch model's state dict (with BatchNorm's num_batches_tracked) loads into the frozen one.
    model.load_state_dict(scratch.state_dict())


def test_test_only_resume_builds_the_model_as_whole_model_weights_do(tmp_path):
    """--test-only --resume reads no backbone (the checkpoint replaces it): the model is still built as a trained
    one."""
    flags = ["--min-size", "64", "--max-size", "64", "--trainable-backbone-layers", "0"]
    with warnings.catch_warnings():
        # torchvision warns when trainable_backbone_layers goes to a model built from scratch
        warnings.simplefilter("error")
        model = _build(_args("--test-only", "--resume", str(tmp_path / "checkpoint.pth"), *flags), 3)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert models.backbone_weights_path(_args("--test-only", "--resume", str(tmp_path / "checkpoint.pth"))) is None


def test_models_without_a_resize_get_no_resize_arguments():
    args = _args("--model", "ssdlite320_mobilenet_v3_large", "--weights-backbone", "none")
    model = models.build_model_or_explain(models.ModelSpec.from_args(args), num_classes=4)
    assert type(model).__name__ == "SSD"
    with pytest.raises(errors.UsageError, match="ssdlite320_mobilenet_v3_large does not take {'min_size': 96}"):
        spec = models.ModelSpec.from_args(_args("--model", "ssdlite320_mobilenet_v3_large", "--min-size", "96"))
        models.build_model_or_explain(spec, 4)


def test_weights_saved_from_a_ddp_wrapper_load(tmp_path):
    model = torchvision.models.get_model(
        "fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    wrapped = {f"module.{k}": v + 1 for k, v in model.state_dict().items() if v.is_floating_point()}
    wrapped |= {f"module.{k}": v for k, v in model.state_dict().items() if not v.is_floating_point()}
    models.load_model_weights(
        model, models.ModelSpec("fasterrcnn_mobilenet_v3_large_320_fpn"), wrapped, "ddp.pth", "--weights"
    )
    assert all(torch.equal(v, wrapped[f"module.{k}"]) for k, v in model.state_dict().items())


def test_iou_types_follow_the_model_class():
    mask_rcnn = torchvision.models.get_model(
        "maskrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=3
    )
    assert models.iou_types_of(mask_rcnn) == ["bbox", "segm"]
    faster = torchvision.models.get_model("fasterrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=3)
    assert models.iou_types_of(faster) == ["bbox"]


# ----------------------------------------------------------------------------- upstream's backbones and enums


def test_backbones_of_upstreams_models_are_read_from_the_hub_cache(torch_home):
    torch.manual_seed(0)
    mobilenet = torchvision.models.mobilenet_v3_large().state_dict()
    torch.save(mobilenet, torch_home / "mobilenet_v3_large-8738ca79.pth")
    vgg = {k: v for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")}
    torch.save(vgg, torch_home / "vgg16_features-amdegroot-88682ab5.pth")
    args = _args(
        "--model", "fasterrcnn_mobilenet_v3_large_fpn", "--weights-backbone", "MobileNet_V3_Large_Weights.IMAGENET1K_V1"
    )
    model = _build(args, 4, models.load_backbone(args))
    body = model.backbone.body
    assert torch.equal(body["0"][0].weight, mobilenet["features.0.0.weight"])  # loaded, as torchvision's builder does
    assert isinstance(body["0"][1], FrozenBatchNorm2d)  # and built as it builds with trained weights
    args = _args("--model", "ssd300_vgg16", "--weights-backbone", "VGG16_Weights.IMAGENET1K_FEATURES")
    ssd = _build(args, 4, models.load_backbone(args))
    assert torch.equal(ssd.backbone.features[0].weight, vgg["features.0.weight"])


def test_a_backbone_of_another_kind_is_refused(torch_home, tmp_path, standin_resnet50):
    os.link(standin_resnet50, torch_home / "resnet50-0676ba61.pth")
    args = _args("--model", "fasterrcnn_mobilenet_v3_large_fpn", "--weights-backbone", "ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(errors.UsageError, match="holds ResNet50_Weights, but fasterrcnn_mobilenet_v3_large_fpn has a "
                       "MobileNetV3-Large backbone"):  # fmt: skip
        models.load_backbone(args)
    args = _args("--model", "fasterrcnn_mobilenet_v3_large_fpn", "--data-path", str(tmp_path))
    with pytest.raises(errors.UsageError, match="has a MobileNetV3-Large backbone; pass --weights-backbone "
                       "MobileNet_V3_Large_Weights.IMAGENET1K_V1"):  # fmt: skip
        models.load_backbone(args)  # no resnet50.pth default for it


@pytest.mark.parametrize(
    "model, expected",
    [
        ("maskrcnn_resnet50_fpn", ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
                                   "roi_heads.mask_predictor.mask_fcn_logits"]),
        ("fasterrcnn_mobilenet_v3_large_fpn", ["roi_heads.box_predictor.cls_score",
                                               "roi_heads.box_predictor.bbox_pred"]),
        ("retinanet_resnet50_fpn", ["head.classification_head.cls_logits"]),
        ("fcos_resnet50_fpn", ["head.classification_head.cls_logits"]),
        ("ssd300_vgg16", [f"head.classification_head.module_list.{i}" for i in range(6)]),
        ("ssdlite320_mobilenet_v3_large", [f"head.classification_head.module_list.{i}.1" for i in range(6)]),
    ],
)  # fmt: skip
def test_the_layers_that_depend_on_the_classes_are_the_class_logits(model, expected):
    dependent = models.dependent_keys(models.ModelSpec(model), "classes")
    assert models._layers(list(dependent)) == expected
    for classes in (2, 5, 91):
        with torch.device("meta"):
            built = torchvision.models.get_model(model, weights=None, weights_backbone=None, num_classes=classes)
        assert models.num_classes_in(models.ModelSpec(model), built.state_dict()) == classes


def test_the_keypoint_predictor_depends_on_the_keypoints():
    spec = models.ModelSpec("keypointrcnn_resnet50_fpn")
    assert models._layers(list(models.dependent_keys(spec, "keypoints"))) == [
        "roi_heads.keypoint_predictor.kps_score_lowres"
    ]
    assert models.dependent_keys(models.ModelSpec("maskrcnn_resnet50_fpn"), "keypoints") == {}


SMALL = models.ModelSpec("maskrcnn_resnet50_fpn", min_size=64, max_size=64)


def test_fine_tuning_loads_every_tensor_that_fits_bit_exactly_and_leaves_the_class_layers_as_built():
    torch.manual_seed(0)
    coco_like = models.build_model(SMALL, 91, whole_model_weights=True).state_dict()
    coco_like = {k: v + 1 if v.is_floating_point() else v for k, v in coco_like.items()}  # unlike any initialisation
    torch.manual_seed(1)
    model = models.build_model(SMALL, 5, whole_model_weights=True)
    as_built = {k: v.clone() for k, v in model.state_dict().items()}
    reinitialised = models.load_model_weights(model, SMALL, coco_like, "coco.pth", "--weights", new_classes=True)
    assert reinitialised == ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred",
                             "roi_heads.mask_predictor.mask_fcn_logits"]  # fmt: skip
    for key, value in model.state_dict().items():
        expected = as_built[key] if key.rsplit(".", 1)[0] in reinitialised else coco_like[key]
        assert torch.equal(value, expected), key
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


def test_fine_tuning_refuses_a_file_with_other_mismatches_naming_them():
    state = models.build_model(SMALL, 91, whole_model_weights=True).state_dict()
    state["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(3, 3)
    del state["rpn.head.conv.0.0.bias"]
    model = models.build_model(SMALL, 5, whole_model_weights=True)
    with pytest.raises(errors.UsageError) as error:
        models.load_model_weights(model, SMALL, state, "other.pth", "--weights", new_classes=True)
    message = str(error.value)
    assert message.startswith("--weights: other.pth does not fit MaskRCNN: it was trained for num_classes=91 and this")
    assert "1 missing keys (rpn.head.conv.0.0.bias)" in message
    assert "1 misshapen keys (backbone.fpn.layer_blocks.0.0.weight)" in message and "another --model" in message


def test_a_plain_coco_state_dict_is_named_by_torchvisions_metadata():
    state = models.build_model(SMALL, 91, whole_model_weights=True).state_dict()
    classes = models.classes_of_file(SMALL, state, None)
    assert classes.label_to_category_id == list(range(91)) and classes.num_classes == 91
    names = classes.names()
    assert (names[1], names[3], names[90]) == ("person", "car", "toothbrush")
    assert all(c["name"] != "N/A" for c in classes.categories) and len(classes.categories) == 80
    five = models.classes_of_file(SMALL, models.build_model(SMALL, 5).state_dict(), None)
    assert five.names() == ["0", "1", "2", "3", "4"]

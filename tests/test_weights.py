"""weights.py: torchvision's weight enums resolved offline to torch hub's cache, files known by their names (their
categories, the legacy FrozenBatchNorm eps), and one line for a file that is not there."""

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

import errors
import weights


def test_an_enum_name_is_the_file_torchvision_would_have_downloaded(torch_home):
    (torch_home / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth").write_bytes(b"")
    found = weights.resolve("MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "--weights")
    assert found.path == torch_home / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    assert found.enum is torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    assert found.legacy_eps and len(found.categories) == 91 and found.categories[1] == "person"


def test_a_missing_cached_file_is_one_line_naming_the_file_and_the_folder(torch_home):
    with pytest.raises(errors.UsageError) as error:
        weights.resolve("ResNet50_Weights.IMAGENET1K_V1", "--weights-backbone")
    message = str(error.value)
    assert message.startswith("--weights-backbone: ResNet50_Weights.IMAGENET1K_V1 is torchvision's resnet50-0676ba61")
    assert f"which is not in {torch_home} (nothing is downloaded)" in message and "\n" not in message


def test_an_unknown_enum_name_says_so():
    with pytest.raises(errors.UsageError, match="--weights: MaskRCNN_ResNet50_FPN_Weights.COCO_V9 is not one of"):
        weights.resolve("MaskRCNN_ResNet50_FPN_Weights.COCO_V9", "--weights")


def test_a_file_named_as_torchvisions_is_known_wherever_it_lies(tmp_path):
    found = weights.identify(str(tmp_path / "keypointrcnn_resnet50_fpn_coco-fc266e95.pth"))
    assert str(found.enum) == "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1" and found.legacy_eps
    assert found.categories == ["no person", "person"]
    renamed = weights.identify(str(tmp_path / "coco.pth"))
    assert renamed.enum is None and not renamed.legacy_eps and renamed.categories is None
    # The v2 weights were trained with today's FrozenBatchNorm: torchvision leaves their eps alone.
    assert not weights.identify("maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth").legacy_eps


def test_overwrite_eps_sets_every_frozen_batchnorm():
    model = torch.nn.Sequential(
        FrozenBatchNorm2d(3), torch.nn.Conv2d(3, 3, 1), torch.nn.Sequential(FrozenBatchNorm2d(4))
    )
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 2 and all(m.eps == 1e-5 for m in frozen)
    weights.overwrite_eps(model)
    assert all(m.eps == 0.0 for m in frozen)

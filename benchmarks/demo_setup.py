"""The demo's model and data for the CPU benchmarks (bench_eval_vs_upstream, bench_cpu_options, bench_hardware): the
Makefile's recipe as builder arguments, its validation split, and its trained model where `make demo` left one."""

import argparse
from pathlib import Path

import torch
import torchvision

import coco_utils
import models
import synthetic
import transforms

# The Makefile's DEMO_FLAGS as maskrcnn_resnet50_fpn's builder arguments (--min-size, --max-size, --model-kwargs)
DEMO_MODEL_KWARGS = {
    "min_size": 128, "max_size": 128, "box_batch_size_per_image": 32, "rpn_batch_size_per_image": 64,
    "rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 300, "box_detections_per_img": 30,
}  # fmt: skip
DEMO_NUM_CLASSES = 18  # the synthetic categories' ids run up to 17
DATA_PATH = Path("data/synthetic")  # make data's
CHECKPOINT = Path("output/demo/checkpoint.pth")  # make demo's


def demo_split(data_path: Path, folder: str) -> Path:
    """`data_path` where it holds val2017, else the demo's data written into `folder`."""
    if (data_path / "annotations" / "instances_val2017.json").is_file():
        return data_path
    print(f"{data_path} holds no val2017: writing the demo's data into a temporary folder")
    return synthetic.generate(folder, num_train=4, num_val=48, seed=0)


def demo_model(checkpoint: Path) -> tuple[torch.nn.Module, str]:
    """The demo's trained model (eval mode, on the CPU) where `checkpoint` exists, else the demo's architecture with
    random heads on the calibrated stand-in ResNet-50; and a note saying which."""
    if checkpoint.is_file():
        model, _ = models.load_trained_model(str(checkpoint), torch.device("cpu"))
        return model, f"the weights of {checkpoint}"
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        "maskrcnn_resnet50_fpn", weights=None, weights_backbone=None, num_classes=DEMO_NUM_CLASSES, **DEMO_MODEL_KWARGS
    )
    model.backbone.body.load_state_dict(synthetic.standin_resnet50(), strict=False)
    return model.eval(), f"random heads on the stand-in ResNet-50 ({checkpoint} is missing)"


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The flags these benchmarks share: the data, the weights, the thread counts, the passes, the images."""
    result = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--data-path", type=Path, default=DATA_PATH, help="the demo's data (make data)")
    result.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="the demo's trained model (make demo)")
    result.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, each in turn")
    result.add_argument("--repeats", type=int, default=repeats, help="timed passes of each path (the median)")
    result.add_argument("--images", type=int, default=None, help="the first N validation images (default all)")
    return result


def validation_set(root: Path, images: int | None) -> torch.utils.data.Dataset:
    """Our validation split of `root` (as train.py reads it for evaluation), its first `images` where given."""
    dataset = coco_utils.get_coco(root, "val", transforms.get_transform(False))
    return dataset if images is None else torch.utils.data.Subset(dataset, range(images))

"""train.py and predict.py with every common weight file: a model trained on other categories fine-tuned to new
classes, torchvision's state dicts and weight enums (offline, from torch hub's cache), checkpoints of torchvision's
reference train.py, and the command lines of upstream's README."""

import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d

import checkpoint as ckpt
import models
import predict
import solver
import synthetic
import synthetic_people
import train
from conftest import TINY_MODEL, run_train, write_reference_checkpoint

pytestmark = pytest.mark.slow

SMALL = [
    "--device", "cpu", "--min-size", "96", "--max-size", "128", "-j", "0", "--print-freq", "4", "--seed", "0",
    "--model-kwargs", "box_batch_size_per_image=32", "rpn_pre_nms_top_n_train=100", "rpn_post_nms_top_n_train=100",
    "rpn_pre_nms_top_n_test=100", "rpn_post_nms_top_n_test=100",
]  # fmt: skip
AP_LINE = re.compile(r" Average (Precision|Recall) .*= -?[\d.]+")
FIRST_AP = re.compile(
    r"IoU metric: (\w+)\n Average Precision  \(AP\) @\[ IoU=0.50:0.95 \| area=   all \| maxDets=100 \] = ([\d.]+)"
)
# The synthetic shapes, told apart in two ways: "merged" knows only round (discs) and angular (the rest) shapes.
MERGED = {2: 1, 5: 2, 11: 2, 17: 2}
MERGED_CATEGORIES = [{"id": 1, "name": "round"}, {"id": 2, "name": "angular"}]


@dataclass
class Saved:
    """One checkpoint a run saved (checkpoint.save_checkpoint's arguments), as torch.load(weights_only=True) reads
    it back from a file."""

    data: dict
    output_dir: Path
    epoch: int | None


def _last_epoch(saved: Saved) -> bool:
    return saved.epoch is not None and saved.epoch == saved.data["args"]["epochs"] - 1


@contextlib.contextmanager
def _checkpoints_in_memory(write: Callable[[Saved], bool] = lambda saved: False) -> Iterator[list[Saved]]:
    """For runs whose checkpoint files are not the point (test_checkpoint.py and the end-to-end tests write them):
    each checkpoint train.py saves, serialised by torch.save and read back with weights_only=True in memory, into
    the list; only those `write` takes (e.g. _last_epoch: the one file a test reads) go to disk, by the real
    checkpoint.save_checkpoint. Everything else in the run (training, evaluation) is as it is."""
    saved_list, real_save = [], ckpt.save_checkpoint

    def save(data: dict, output_dir, epoch: int | None = None, keep: int | None = None) -> Path:
        buffer = io.BytesIO()
        torch.save(data, buffer)
        buffer.seek(0)
        saved = Saved(torch.load(buffer, weights_only=True), Path(output_dir), epoch)
        saved_list.append(saved)
        if write(saved):
            return real_save(data, output_dir, epoch, keep)
        return Path(output_dir) / ckpt.CHECKPOINT_FILE

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ckpt, "save_checkpoint", save)
        yield saved_list


def _final_ap(output: str) -> dict[str, float]:
    """The last evaluation's AP per IoU type."""
    return {iou_type: float(ap) for iou_type, ap in FIRST_AP.findall(output)}


def _own_split_flags(root: Path, name: str) -> list[str]:
    return [
        "--train-images", root / "train2017", "--train-annotations", root / f"{name}_train.json",
        "--val-images", root / "val2017", "--val-annotations", root / f"{name}_val.json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """The synthetic shapes as one's own annotation files twice: "shapes" has the four shapes as four categories,
    "merged" the same objects as two (and 4 evaluation images: it serves to pretrain)."""
    root = synthetic.generate(tmp_path_factory.mktemp("shapes"), num_train=32, num_val=12, seed=3)
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
        (root / f"shapes_{split}.json").write_text(json.dumps(data))
        images = data["images"][:4] if split == "val" else data["images"]
        kept = {image["id"] for image in images}
        merged = [{**a, "category_id": MERGED[a["category_id"]]} for a in data["annotations"] if a["image_id"] in kept]
        merged_data = {**data, "images": images, "annotations": merged, "categories": MERGED_CATEGORIES}
        (root / f"merged_{split}.json").write_text(json.dumps(merged_data))
    return root


@pytest.fixture(scope="module")
def pretrained(shapes, tmp_path_factory) -> Path:
    """The small Mask R-CNN trained on round and angular shapes (3 classes with the background)."""
    output = tmp_path_factory.mktemp("pretrained")
    flags = [*_own_split_flags(shapes, "merged"), *TINY_MODEL, "--output-dir", output, "--eval-every", "99"]
    schedule = ["--opt", "adamw", "--lr", PRETRAIN_LR, "--epochs", "24", "--lr-steps", "20", "-b", "4"]
    with _checkpoints_in_memory(write=_last_epoch) as saved:  # 24 epochs: the last one's file is the one read
        status, out, err = run_train([*flags, *SMALL, *schedule])
    assert status == 0, err[-2000:]
    assert [s.epoch for s in saved] == list(range(24)) and (output / "model_23.pth").is_file()
    return output / "checkpoint.pth"


PRETRAIN_LR = "0.003"
# --eval-every 2: the tests read the last AP only
FINE_TUNE = ["--opt", "adamw", "--lr", "0.002", "--epochs", "2", "--lr-steps", "1", "-b", "4", "--eval-every", "2"]
# AP: what a detector trained on other categories brings after these 16 iterations, at least. Over seeds 0-3, with
# AVX-512 and AVX2 kernels, and in CI, fine-tuning gave box AP 0.23-0.32 and mask AP 0.09-0.34 against at most 0.016
# and 0.020 from the backbone alone: the masks of 24 tiny epochs vary most with the order of a machine's sums.
FINE_TUNING_MARGIN = {"bbox": 0.15, "segm": 0.05}


def _fine_tune(shapes: Path, output: Path, *start: str) -> tuple[str, dict[str, float], dict]:
    """The fine-tuning run: its log, final AP and last checkpoint (kept in memory: no test reads its files)."""
    flags = [*_own_split_flags(shapes, "shapes"), "--output-dir", output, *SMALL, *FINE_TUNE, *start]
    with _checkpoints_in_memory() as saved:
        status, out, err = run_train(flags)
    assert status == 0, err[-2000:]
    assert [(s.output_dir, s.epoch) for s in saved] == [(Path(output), 0), (Path(output), 1)]
    return out, _final_ap(out), saved[-1].data


@pytest.fixture(scope="module")
def fine_tuned(pretrained, shapes, tmp_path_factory) -> tuple[str, dict[str, float]]:
    """The 3-class model fine-tuned to the four shapes (5 classes): its log and final AP."""
    out, ap, _ = _fine_tune(shapes, tmp_path_factory.mktemp("fine_tuned"), *TINY_MODEL, "--weights", pretrained)
    return out, ap


@pytest.fixture(scope="module")
def resnet50_shapes(shapes, standin_resnet50, tmp_path_factory) -> dict:
    """maskrcnn_resnet50_fpn trained on the four shapes from the stand-in backbone (16 iterations, frozen stages: a
    model that detects): its last checkpoint, as torch.load reads it (in memory: two files of 340 MB unwritten)."""
    output = tmp_path_factory.mktemp("resnet50_shapes")
    _, _, checkpoint = _fine_tune(shapes, output, "--weights-backbone", standin_resnet50,
                                  "--trainable-backbone-layers", "0", "--lr", "0.0005")  # fmt: skip
    return checkpoint


def _reinitialised_line(weights: Path) -> str:
    return (
        f"Fine-tuning {weights}, trained for 3 classes, to this dataset's 5: roi_heads.box_predictor.cls_score, "
        "roi_heads.box_predictor.bbox_pred, roi_heads.mask_predictor.mask_fcn_logits start as the model builder "
        "initialises them; every other tensor is loaded"
    )


def test_fine_tuning_a_model_of_other_categories_beats_the_backbone_alone(pretrained, fine_tuned, shapes, tmp_path):
    """The same iterations on the four shapes: from the 3-class model (train.py's checkpoint, and the same weights as
    a plain torchvision-format state dict), and from its backbone alone."""
    baseline_out, baseline, _ = _fine_tune(shapes, tmp_path / "baseline", *TINY_MODEL)
    assert "Fine-tuning" not in baseline_out
    plain = tmp_path / "plain.pth"
    torch.save(torch.load(pretrained, weights_only=True)["model"], plain)
    tuned_out, tuned = fine_tuned
    plain_out, from_plain, _ = _fine_tune(shapes, tmp_path / "plain", *TINY_MODEL, "--weights", plain)
    for weights, out, ap in ((pretrained, tuned_out, tuned), (plain, plain_out, from_plain)):
        assert _reinitialised_line(weights) in out.splitlines()
        for iou_type in ("bbox", "segm"):
            margin = FINE_TUNING_MARGIN[iou_type]
            assert ap[iou_type] >= baseline[iou_type] + margin, (weights.name, iou_type, ap, baseline)
    assert from_plain == tuned  # the same weights, the same run


# ----------------------------------------------------------------------------- a 91-class COCO file


def _widened_to_category_ids(state: dict, label_to_category_id: list[int], num_classes: int = 91) -> dict:
    """A contiguous-label model's weights as those of a model whose labels are the category ids (torchvision's COCO
    layout): each label's rows move to its category id's; the other classes' logits are never above the rest."""
    widened = dict(state)
    per_class = {"roi_heads.box_predictor.cls_score": 1, "roi_heads.box_predictor.bbox_pred": 4,
                 "roi_heads.mask_predictor.mask_fcn_logits": 1}  # fmt: skip
    for layer, rows in per_class.items():
        for suffix in ("weight", "bias"):
            old = state[f"{layer}.{suffix}"]
            new = old.new_zeros((num_classes * rows, *old.shape[1:]))
            if suffix == "bias" and layer.endswith("cls_score"):
                new.fill_(-30.0)
            for label, category_id in enumerate(label_to_category_id):
                new[category_id * rows : (category_id + 1) * rows] = old[label * rows : (label + 1) * rows]
            widened[f"{layer}.{suffix}"] = new
    # Sixteen iterations leave the mask logits near 0, where float rounding decides pixels at probability 0.5 (see
    # masks.paste_masks_to_rles): spread them, as a trained model's are, so that both pastings give the same masks.
    for suffix in ("weight", "bias"):
        widened[f"roi_heads.mask_predictor.mask_fcn_logits.{suffix}"] *= 30
    return widened


@pytest.fixture(scope="module")
def coco_file(resnet50_shapes, tmp_path_factory) -> Path:
    """A 91-class state dict named as torchvision's COCO Mask R-CNN (a legacy file: eps 0), which detects the four
    shapes as COCO's categories 2, 5, 11 and 17. Tests read it, never write it: one that needs it at a path of its
    own links it there (os.link: a second name, no bytes)."""
    path = tmp_path_factory.mktemp("coco") / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(_widened_to_category_ids(resnet50_shapes["model"], resnet50_shapes["label_to_category_id"]), path)
    return path


def _reference_evaluation(weights: Path, root: Path) -> list[str]:
    """The 24 numbers as torchvision's reference gets them: the model as torchvision's builder makes it for its COCO
    weights (frozen BatchNorm, eps 0), its own mask pasting, pycocotools on every image."""
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d)
    model = MaskRCNN(backbone, num_classes=91, min_size=96, max_size=128, rpn_pre_nms_top_n_test=100,
                     rpn_post_nms_top_n_test=100)  # fmt: skip
    model.load_state_dict(torch.load(weights, weights_only=True))
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = 0.0
    model.eval()
    ann_file = root / "annotations" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
    # Per IoU type, as the reference's CocoEvaluator prepares them: loadRes takes the area from a bbox when it has one.
    results = {"bbox": [], "segm": []}
    for image_id in sorted(gt.imgs):
        image = predict.read_image(root / "val2017" / gt.imgs[image_id]["file_name"])
        with torch.inference_mode():
            (output,) = model([image.float() / 255])
        boxes = output["boxes"].tolist()
        for i, (label, score) in enumerate(zip(output["labels"].tolist(), output["scores"].tolist())):
            binary = np.asfortranarray((output["masks"][i, 0] > 0.5).numpy().astype(np.uint8))
            rle = mask_utils.encode(binary)
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = boxes[i]
            common = {"image_id": image_id, "category_id": label, "score": score}
            results["bbox"].append({**common, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            results["segm"].append({**common, "segmentation": rle})
    lines = []
    for iou_type in ("bbox", "segm"):
        evaluation = COCOeval(gt, gt.loadRes(results[iou_type]), iou_type)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        lines += [m.group(0) for m in AP_LINE.finditer(printed.getvalue())]
    return lines


def test_a_91_class_coco_file_evaluates_as_the_reference_does_on_a_layout_whose_ids_stop_below_90(coco_file, shapes):
    """The synthetic layout's ids stop at 17: with category-id labels the file's 91 classes are kept, nothing is
    re-initialised, and the 24 numbers are the reference's."""
    flags = ["--data-path", shapes, "--weights", coco_file, "--test-only", *SMALL[: SMALL.index("--model-kwargs")]]
    status, out, err = run_train(
        [*flags, "--model-kwargs", "rpn_pre_nms_top_n_test=100", "rpn_post_nms_top_n_test=100"]
    )
    assert status == 0, err[-2000:]
    ours = [m.group(0) for m in AP_LINE.finditer(out)]
    assert len(ours) == 24 and ours == _reference_evaluation(coco_file, shapes)
    assert "Fine-tuning" not in out
    assert float(ours[0].rsplit("=", 1)[1]) > 0.05  # a model that detects: the comparison means something


def test_a_legacy_coco_file_gets_torchvisions_eps_and_a_renamed_one_does_not(coco_file, tmp_path):
    model, classes = predict.load_trained_model(str(coco_file), torch.device("cpu"))
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 0.0 for m in frozen)
    renamed = tmp_path / "my_model.pth"
    os.link(coco_file, renamed)
    model, _ = predict.load_trained_model(str(renamed), torch.device("cpu"))
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, FrozenBatchNorm2d))
    names = classes.names()
    assert (names[1], names[2], names[5], names[90]) == ("person", "bicycle", "airplane", "toothbrush")


def test_predict_draws_a_torchvision_state_dict_with_cocos_names(coco_file, shapes, tmp_path, capsys):
    images = sorted((shapes / "val2017").iterdir())[:3]
    status = predict.cli([*map(str, images), "--checkpoint", str(coco_file), "--output-dir", str(tmp_path / "p"),
                          "--score-thresh", "0.3", "--annotations", str(shapes / "shapes_val.json")])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    entries = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert entries and {e["category_id"] for e in entries} <= {2, 5, 11, 17}  # the shapes, as COCO ids
    assert sorted(p.name for p in (tmp_path / "p").glob("*.png")) == sorted(f"{p.stem}.png" for p in images)


def test_an_enum_name_reads_the_file_from_the_hub_cache_and_a_missing_one_names_it(coco_file, shapes, torch_home):
    flags = ["--data-path", shapes, "--test-only", *SMALL]
    status, _, err = run_train([*flags, "--weights", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"])
    assert status == 2 and err.count("\n") == 1
    assert f"maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth, which is not in {torch_home}" in err
    os.link(coco_file, torch_home / coco_file.name)
    status, out, err = run_train([*flags, "--weights", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"])
    assert status == 0, err[-2000:]
    assert len([m for m in AP_LINE.finditer(out)]) == 24


# ----------------------------------------------------------------------------- the reference's checkpoints


@pytest.fixture(scope="module")
def few_shapes(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("few_shapes"), num_train=8, num_val=4, seed=4)


@pytest.fixture(scope="module")
def reference_checkpoint(few_shapes, tmp_path_factory) -> tuple[Path, str]:
    """One epoch on the synthetic COCO layout, saved as torchvision's reference train.py saves it; and the AP table
    of its evaluation."""
    output = tmp_path_factory.mktemp("reference")
    flags = ["--data-path", few_shapes, "--output-dir", output, *TINY_MODEL, *SMALL]
    status, out, err = run_train([*flags, "--epochs", "1", "-b", "4", "--opt", "adamw", "--lr", "0.0005"])
    assert status == 0, err[-2000:]
    checkpoint = torch.load(output / "checkpoint.pth", weights_only=True)
    path = write_reference_checkpoint(
        output / "model_0_reference.pth", checkpoint, model="maskrcnn_tiny_fpn", weights_backbone=None, opt="adamw",
        batch_size=4, lr=0.0005, world_size=1,
    )  # fmt: skip
    return path, "\n".join(m.group(0) for m in AP_LINE.finditer(out))


def test_a_reference_checkpoint_resumes_at_its_next_epoch_and_evaluates(reference_checkpoint, few_shapes, tmp_path):
    path, evaluated = reference_checkpoint
    flags = ["--data-path", few_shapes, *TINY_MODEL, *SMALL, "-b", "4", "--opt", "adamw"]
    status, out, err = run_train([*flags, "--test-only", "--resume", path])
    assert status == 0, err[-2000:]
    assert "\n".join(m.group(0) for m in AP_LINE.finditer(out)) == evaluated  # the same model, the same numbers
    status, out, err = run_train([*flags, "--resume", path, "--epochs", "2", "--output-dir", tmp_path / "resumed"])
    assert status == 0, err[-2000:]
    assert "Epoch: [1]" in out and "Epoch: [0]" not in out
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == 1 and len(resumed["optimizer"]["state"]) > 0
    status, out, err = run_train([*flags, "--weights", path, "--epochs", "1", "--output-dir", tmp_path / "weights"])
    assert status == 0 and "Fine-tuning" not in out, err[-2000:]  # its model, as it is


# ----------------------------------------------------------------------------- upstream's README


UPSTREAM_COMMANDS = {  # references/detection/README.md, after "torchrun --nproc_per_node=8 train.py"
    "Faster R-CNN ResNet-50 FPN": "--dataset coco --model fasterrcnn_resnet50_fpn --epochs 26 --lr-steps 16 22 "
    "--aspect-ratio-group-factor 3 --weights-backbone ResNet50_Weights.IMAGENET1K_V1",
    "Faster R-CNN MobileNetV3-Large FPN": "--dataset coco --model fasterrcnn_mobilenet_v3_large_fpn --epochs 26 "
    "--lr-steps 16 22 --aspect-ratio-group-factor 3 --weights-backbone MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "Faster R-CNN MobileNetV3-Large 320 FPN": "--dataset coco --model fasterrcnn_mobilenet_v3_large_320_fpn "
    "--epochs 26 --lr-steps 16 22 --aspect-ratio-group-factor 3 "
    "--weights-backbone MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "FCOS ResNet-50 FPN": "--dataset coco --model fcos_resnet50_fpn --epochs 26 --lr-steps 16 22 "
    "--aspect-ratio-group-factor 3  --lr 0.01 --amp --weights-backbone ResNet50_Weights.IMAGENET1K_V1",
    "RetinaNet": "--dataset coco --model retinanet_resnet50_fpn --epochs 26 --lr-steps 16 22 "
    "--aspect-ratio-group-factor 3 --lr 0.01 --weights-backbone ResNet50_Weights.IMAGENET1K_V1",
    "SSD300 VGG16": "--dataset coco --model ssd300_vgg16 --epochs 120 --lr-steps 80 110 --aspect-ratio-group-factor 3 "
    "--lr 0.002 --batch-size 4 --weight-decay 0.0005 --data-augmentation ssd "
    "--weights-backbone VGG16_Weights.IMAGENET1K_FEATURES",
    "SSDlite320 MobileNetV3-Large": "--dataset coco --model ssdlite320_mobilenet_v3_large --epochs 660 "
    "--aspect-ratio-group-factor 3 --lr-scheduler cosineannealinglr --lr 0.15 --batch-size 24 --weight-decay 0.00004 "
    "--data-augmentation ssdlite --weights-backbone MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "Mask R-CNN": "--dataset coco --model maskrcnn_resnet50_fpn --epochs 26 --lr-steps 16 22 "
    "--aspect-ratio-group-factor 3 --weights-backbone ResNet50_Weights.IMAGENET1K_V1",
    "Keypoint R-CNN": "--dataset coco_kp --model keypointrcnn_resnet50_fpn --epochs 46 --lr-steps 36 43 "
    "--aspect-ratio-group-factor 3 --weights-backbone ResNet50_Weights.IMAGENET1K_V1",
}


@pytest.fixture(scope="module")
def upstream_cache(standin_resnet50, tmp_path_factory) -> Path:
    """Stand-in files for the backbones upstream's README names, in a torch hub cache of their own (ResNet-50's is
    the stand-in backbone, linked)."""
    import torchvision

    folder = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    os.link(standin_resnet50, folder / "resnet50-0676ba61.pth")
    torch.save(torchvision.models.mobilenet_v3_large().state_dict(), folder / "mobilenet_v3_large-8738ca79.pth")
    vgg = {k: v for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")}
    torch.save(vgg, folder / "vgg16_features-amdegroot-88682ab5.pth")
    return folder


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> dict[str, Path]:
    """Two training and one evaluation image per dataset kind: one iteration an epoch."""
    roots = {}
    for kind in ("coco", "coco_kp"):
        generate = synthetic_people.generate_keypoints if kind == "coco_kp" else synthetic.generate
        roots[kind] = generate(tmp_path_factory.mktemp(kind), num_train=2, num_val=1, seed=1)
    return roots


@pytest.mark.parametrize("name", list(UPSTREAM_COMMANDS))
def test_every_command_line_of_upstreams_readme_starts_here(name, upstream_cache, two_images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(upstream_cache.parent.parent))
    command = UPSTREAM_COMMANDS[name].split()
    dataset = command[command.index("--dataset") + 1]
    tiny = ["--epochs", "1", "--device", "cpu", "-j", "0", "--output-dir", tmp_path, "--data-path", two_images[dataset]]
    if not command[command.index("--model") + 1].startswith("ssd"):  # SSDs have a fixed input size
        tiny += ["--min-size", "64", "--max-size", "96"]
    with _checkpoints_in_memory() as saved:  # a full model and its optimizer's state: up to 470 MB a file
        status, out, err = run_train([*command, *tiny])
    assert status == 0, err[-3000:]
    assert "Epoch: [0]  [0/1]" in out and "IoU metric: bbox" in out
    assert [(s.output_dir, s.epoch) for s in saved] == [(tmp_path, 0)]  # model_0.pth, once
    data = saved[0].data
    model_name = command[command.index("--model") + 1]
    assert data["args"]["model"] == model_name and data["epoch"] == 0
    assert {"optimizer", "lr_scheduler"} <= set(data) and data["optimizer"]["state"]  # a checkpoint that resumes
    # The model its args name, every tensor in its shape (built on the meta device: no memory, no initialisation).
    recorded = ckpt.Checkpoint.from_dict(data)
    classes = recorded.classes
    with torch.device("meta"):
        built = models.build_model(
            models.ModelSpec.from_args(recorded.args), classes.num_classes,
            num_keypoints=len(classes.keypoint_names) or None, whole_model_weights=True,
        )  # fmt: skip
    assert {k: v.shape for k, v in data["model"].items()} == {k: v.shape for k, v in built.state_dict().items()}


def test_choice_values_in_upstreams_spelling_are_accepted():
    args = train.get_args_parser().parse_args(["--opt", "SGD", "--lr-scheduler", "MultiStepLR"])
    assert (args.opt, args.lr_scheduler) == ("sgd", "multisteplr")


def test_auto_scale_lr_scales_to_the_total_batch_and_a_default_lr_gets_a_suggestion(capsys):
    args = train.get_args_parser().parse_args(["-b", "4", "--auto-scale-lr"])
    assert solver.scaled_lr(args, 1) == pytest.approx(0.005)
    assert args.lr == 0.02  # the flag stays as typed
    assert capsys.readouterr().out == "--auto-scale-lr: lr 0.02 x 4 images per step / 16 = 0.005\n"
    args = train.get_args_parser().parse_args(["-b", "4"])
    assert solver.scaled_lr(args, 1) == 0.02 and "--auto-scale-lr would use 0.005" in capsys.readouterr().out
    assert solver.scaled_lr(train.get_args_parser().parse_args(["-b", "4", "--lr", "0.01"]), 1) == 0.01
    assert capsys.readouterr().out == ""  # the user's own lr

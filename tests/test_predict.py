"""predict.py on checkpoints that train.py really wrote (one iteration each, from scratch): pictures, predictions.json,
the classes a checkpoint names, agreement with train.py's own evaluation, keypoints, and bad input."""

import contextlib
import io
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.transforms.v2 import functional as F

import checkpoint as ckpt
import pictures
import predict
import train

CATEGORY_IDS = {2: "disc", 5: "square", 11: "triangle", 17: "bars"}  # the synthetic dataset's, not contiguous
# One iteration (-b 2 on 2 images, no aspect-ratio groups) at a tiny lr: the model stays near its initialisation, and
# with box_score_thresh=0 it still returns detections; fewer of them than 100 keep the mask (or keypoint) head cheap on
# 2 CPU cores.
TRAIN_FLAGS = [
    "--epochs", "1", "--lr", "0.0001", "-b", "2", "--aspect-ratio-group-factor", "-1", "--weights-backbone", "none",
    "--device", "cpu", "--min-size", "96", "--max-size", "128", "-j", "0", "--seed", "0", "--print-freq", "1",
    "--save-predictions",
]  # fmt: skip
MODEL_KWARGS = [
    "rpn_pre_nms_top_n_train=100", "rpn_post_nms_top_n_train=100", "rpn_pre_nms_top_n_test=100",
    "rpn_post_nms_top_n_test=100",
    "box_score_thresh=0.0",
]  # fmt: skip
# Shorter side 256: the synthetic images (width x height) 128x128, 128x96 and 96x128 are drawn at these sizes.
UPSCALED = {(128, 128): (256, 256), (128, 96): (341, 256), (96, 128): (256, 341)}
REPORT_LINE = re.compile(r"^(.+): (\d+) detections, (\d+) drawn in (.+\.png)$", re.MULTILINE)


def _small_copy(root: Path, dest: Path, num_images: dict[str, int]) -> Path:
    """`root` with only the first images of each split (and their annotations), in every annotation file it has."""
    (dest / "annotations").mkdir(parents=True)
    for ann_file in (root / "annotations").glob("*.json"):
        split = next(s for s in num_images if ann_file.stem.endswith(f"_{s}2017"))
        data = json.loads(ann_file.read_text())
        data["images"] = data["images"][: num_images[split]]
        kept = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in kept]
        (dest / "annotations" / ann_file.name).write_text(json.dumps(data))
        (dest / f"{split}2017").mkdir(exist_ok=True)
        for image in data["images"]:
            shutil.copy(root / f"{split}2017" / image["file_name"], dest / f"{split}2017" / image["file_name"])
    return dest


def _train(output: Path, *flags: str, detections: int = 25, rois: int = 32) -> Path:
    """train.py for one iteration, sampling `rois` proposals per image (a quarter of them positive, for the mask or
    keypoint head); a checkpoint whose model returns its best `detections` per image, whatever their scores."""
    model_kwargs = [
        "--model-kwargs",
        *MODEL_KWARGS,
        f"box_batch_size_per_image={rois}",
        f"box_detections_per_img={detections}",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        # the tests' small Mask R-CNN unless `flags` name another model
        assert train.cli(["--model", "maskrcnn_tiny_fpn", *flags, "--output-dir", str(output), *TRAIN_FLAGS,
                          *model_kwargs]) == 0  # fmt: skip
    return output


def _predict(*argv: str) -> tuple[int, str]:
    """predict.cli in-process; its exit status and what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = predict.cli([*argv, "--device", "cpu"])
    return status, out.getvalue()


def _by_image(entries: list[dict]) -> dict[int, list[dict]]:
    grouped = defaultdict(list)
    for entry in entries:
        grouped[entry["image_id"]].append(entry)
    return grouped


def _read_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return F.pil_to_tensor(image.convert("RGB"))


def _plain_picture(path: Path, upscale: bool) -> torch.Tensor:
    """The image as predict draws it when nothing scores high enough: enlarged as it enlarges it (or not at all)."""
    image = _read_rgb(path)
    if not upscale:
        return image
    height, width = image.shape[-2:]
    new_width, new_height = UPSCALED[(width, height)]
    return F.resize(image, [new_height, new_width], antialias=True)


@pytest.fixture(scope="module")
def small_root(synthetic_root, tmp_path_factory) -> Path:
    """2 training images (one iteration) and 4 validation images of all three sizes."""
    return _small_copy(synthetic_root, tmp_path_factory.mktemp("small"), {"train": 2, "val": 4})


@pytest.fixture(scope="module")
def run(small_root, tmp_path_factory):
    """A checkpoint with the reference's labels (the category ids), and predict.py on the validation folder, at a
    threshold that draws each image's best detection (taken from train.py's own predictions of these images)."""
    # maskrcnn_resnet50_fpn: after one iteration its best detections are of real categories in every image. No
    # momentum: the one step is the same, and the checkpoint holds no optimizer state (177 MB, not 352 MB).
    resnet50 = ["--model", "maskrcnn_resnet50_fpn", "--momentum", "0"]
    output = _train(tmp_path_factory.mktemp("train"), "--data-path", str(small_root), *resnet50)
    evaluated = json.loads((output / "predictions_0.json").read_text())
    real = [e for e in evaluated if e["category_id"] in CATEGORY_IDS]
    assert len(_by_image(real)) == 4, "an image without detections of a category: the tests below need some in each"
    best = min(max(e["score"] for e in entries) for entries in _by_image(real).values())
    # Just below, and a float32 value: predict compares float32 scores, the test the JSON's (float32 values too).
    thresh = float(np.float32(best * (1 - 1e-4)))
    pictures = tmp_path_factory.mktemp("pictures")
    annotations = small_root / "annotations" / "instances_val2017.json"
    status, printed = _predict(
        str(small_root / "val2017"), "--checkpoint", str(output / "checkpoint.pth"), "--output-dir", str(pictures),
        "--annotations", str(annotations), "--upscale-to", "256", "--score-thresh", repr(thresh),
    )  # fmt: skip
    assert status == 0, printed
    return {
        "checkpoint": output / "checkpoint.pth",
        "evaluated": evaluated,
        "thresh": thresh,
        "pictures": pictures,
        "printed": printed,
        "entries": json.loads((pictures / "predictions.json").read_text()),
        "images": sorted((small_root / "val2017").iterdir()),
        "annotations": annotations,
    }


# ----------------------------------------------------------------------------- pictures and predictions.json


@pytest.mark.slow
def test_a_folder_gives_a_picture_per_image_named_after_it_enlarged_and_predictions_json(run):
    written = sorted(p.name for p in run["pictures"].iterdir())
    assert written == sorted([f"{p.stem}.png" for p in run["images"]] + ["predictions.json"])
    sizes = set()
    for path in run["images"]:
        with Image.open(path) as image, Image.open(run["pictures"] / f"{path.stem}.png") as picture:
            assert picture.size == UPSCALED[image.size], path.name
            assert picture.mode == "RGB"
            sizes.add(image.size)
    assert sizes == set(UPSCALED)  # all three shapes were tried
    assert run["printed"].rstrip().splitlines()[-1] == f"Saved {run['pictures'] / 'predictions.json'}"


@pytest.mark.slow
def test_predictions_json_is_a_coco_results_list_with_category_ids_and_file_names(run):
    entries = run["entries"]
    listed = {image["file_name"]: image for image in json.loads(run["annotations"].read_text())["images"]}
    assert entries and {e["file_name"] for e in entries} == {p.name for p in run["images"]}
    for entry in entries:
        assert set(entry) == {"image_id", "category_id", "score", "bbox", "segmentation", "file_name"}
        image = listed[entry["file_name"]]
        assert entry["image_id"] == image["id"]  # the annotation file's id for that file name, not 1, 2, ...
        assert entry["category_id"] in CATEGORY_IDS, entry["category_id"]
        assert 0 <= entry["score"] <= 1
        assert len(entry["bbox"]) == 4 and all(isinstance(v, float) for v in entry["bbox"])
        assert entry["segmentation"]["size"] == [image["height"], image["width"]]
        assert isinstance(entry["segmentation"]["counts"], str)
    per_image = _by_image(entries)
    assert all(e["score"] >= f["score"] for group in per_image.values() for e, f in zip(group, group[1:]))  # best first


@pytest.mark.slow
def test_predictions_json_loads_into_pycocotools_and_scores(run):
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(run["annotations"]))
        detections = ground_truth.loadRes(str(run["pictures"] / "predictions.json"))
        for iou_type in ("bbox", "segm"):
            evaluation = COCOeval(ground_truth, detections, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert len(evaluation.stats) == 12 and all(-1 <= s <= 1 for s in evaluation.stats)
    assert set(detections.getImgIds()) == set(ground_truth.getImgIds())


@pytest.mark.slow
def test_pictures_show_the_detections_above_the_threshold_and_the_report_counts_them(run):
    reported = {
        Path(m.group(1)).name: (int(m.group(2)), int(m.group(3)), m.group(4))
        for m in REPORT_LINE.finditer(run["printed"])
    }
    assert set(reported) == {p.name for p in run["images"]}
    per_file = defaultdict(list)
    for entry in run["entries"]:
        per_file[entry["file_name"]].append(entry)
    assert any(e["score"] < run["thresh"] for e in run["entries"]), "all drawn: the threshold would go untested"
    for path in run["images"]:
        entries = per_file[path.name]
        drawn = [e for e in entries if e["score"] >= run["thresh"]]
        assert reported[path.name] == (len(entries), len(drawn), str(run["pictures"] / f"{path.stem}.png"))
        assert drawn, f"{path.name}: the threshold was chosen to draw each image's best detection"
        plain = _plain_picture(path, upscale=True)
        picture = _read_rgb(run["pictures"] / f"{path.stem}.png")
        assert picture.shape == plain.shape
        changed = (picture != plain).any(dim=0)
        scale = changed.shape[0] / _read_rgb(path).shape[-2]
        allowed = torch.zeros_like(changed)
        for entry in drawn:
            x, y, w, h = (v * scale for v in entry["bbox"])
            # Inside its box, something is drawn (outline, mask, caption).
            inside = changed[int(y) : int(np.ceil(y + h)) + 1, int(x) : int(np.ceil(x + w)) + 1]
            assert inside.any(), f"{path.name}: nothing drawn in the box {entry['bbox']}"
            # Around it: the mask may spill past the box a little (Mask R-CNN pastes it into an enlarged box),
            # and the caption, written inside from the top left corner, may run past the right edge of a small box.
            x0, y0 = max(0, int(x - 0.1 * w - 3)), max(0, int(y - 0.1 * h - 3))
            y1 = int(max(y + 1.1 * h + 3, y + 25))
            allowed[y0 : y1 + 1, x0:] = True
        assert not (changed & ~allowed).any(), f"{path.name}: pixels changed away from the drawn detections"


@pytest.mark.slow
@pytest.mark.filterwarnings("error::UserWarning")  # none of torchvision's "no box was drawn"
def test_a_threshold_of_1_draws_nothing_the_picture_is_the_resized_image(run, tmp_path):
    images = [p for p in run["images"] if _read_rgb(p).shape[-1] != _read_rgb(p).shape[-2]]  # the two non-square ones
    assert len(images) == 2
    status, printed = _predict(
        *map(str, images), "--checkpoint", str(run["checkpoint"]), "--output-dir", str(tmp_path), "--upscale-to", "256",
        "--score-thresh", "1.0",
    )  # fmt: skip
    assert status == 0
    for path in images:
        assert torch.equal(_read_rgb(tmp_path / f"{path.stem}.png"), _plain_picture(path, upscale=True)), path.name
        assert re.search(rf"{re.escape(path.name)}: \d+ detections, 0 drawn in ", printed)
    entries = json.loads((tmp_path / "predictions.json").read_text())
    # No --annotations: the images are numbered in input order.
    assert {(e["image_id"], e["file_name"]) for e in entries} == {(1, images[0].name), (2, images[1].name)}


# ----------------------------------------------------------------------------- the same model as train.py's evaluation


@pytest.mark.slow
def test_predictions_match_train_py_s_saved_predictions_for_the_same_checkpoint(run):
    """train.py evaluates with batches of 1, so the model sees exactly the same inputs: predict.py's detections are the
    evaluated ones, both without labels that are no category (see below)."""
    evaluated = _by_image(run["evaluated"])
    predicted = _by_image(run["entries"])
    assert set(evaluated) == set(predicted)
    for image_id, entries in predicted.items():
        expected = evaluated[image_id]
        assert len(entries) == len(expected), image_id
        assert [e["category_id"] for e in entries] == [e["category_id"] for e in expected]
        np.testing.assert_allclose([e["bbox"] for e in entries], [e["bbox"] for e in expected], atol=1e-3)
        np.testing.assert_allclose([e["score"] for e in entries], [e["score"] for e in expected], atol=1e-4)


@pytest.mark.slow
def test_labels_that_are_no_category_are_left_out(run, small_root):
    """With labels = category ids, the classifier also has outputs for the ids between them (1, 3, 4, 6, ...); an
    untrained one scores them as much as the real ones. Neither predict.py nor train.py's saved predictions keep
    them."""
    model, _ = predict.load_trained_model(str(run["checkpoint"]), torch.device("cpu"))
    image = _read_rgb(next((small_root / "val2017").iterdir()))
    with torch.inference_mode():
        labels = set(model([F.to_dtype(image, torch.float32, scale=True)])[0]["labels"].tolist())
    assert labels - set(CATEGORY_IDS), "this checkpoint gives no such labels: the test tests nothing"
    assert {e["category_id"] for e in run["entries"]} <= set(CATEGORY_IDS)
    assert {e["category_id"] for e in run["evaluated"]} <= set(CATEGORY_IDS)


# ----------------------------------------------------------------------------- classes


@pytest.mark.slow
def test_class_names_are_indexed_by_label(run):
    checkpoint = torch.load(run["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["label_to_category_id"] == list(range(18))
    names = ckpt.Checkpoint.from_dict(checkpoint).classes.names()
    assert len(names) == 18
    assert {label: names[label] for label in CATEGORY_IDS} == CATEGORY_IDS
    assert names[0] == "0" and names[3] == "3"  # the background and an id without a category: their numbers


@pytest.mark.slow
def test_contiguous_labels_are_named_and_mapped_back_to_category_ids(small_root, tmp_path):
    """Your own data (--train-images ...) gets labels 1..4; predictions still hold the category ids."""
    annotations = {split: small_root / "annotations" / f"instances_{split}2017.json" for split in ("train", "val")}
    own_data = [f"--{split}-{kind}" for split in ("train", "val") for kind in ("images", "annotations")]
    paths = [small_root / "train2017", annotations["train"], small_root / "val2017", annotations["val"]]
    output = _train(tmp_path / "train", *(f"{flag}={path}" for flag, path in zip(own_data, paths)), detections=10)
    checkpoint = torch.load(output / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert checkpoint["label_to_category_id"] == [0, 2, 5, 11, 17]
    assert ckpt.Checkpoint.from_dict(checkpoint).classes.names() == ["0", "disc", "square", "triangle", "bars"]
    status, _ = _predict(
        str(small_root / "val2017"), "--checkpoint", str(output / "checkpoint.pth"),
        "--output-dir", str(tmp_path / "p"), "--annotations", str(annotations["val"]),
    )  # fmt: skip
    assert status == 0
    entries = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert entries and {e["category_id"] for e in entries} <= set(CATEGORY_IDS)
    assert {e["category_id"] for e in entries} - {1, 2, 3, 4}  # mapped, not the labels themselves
    # Every label is a category here: the very detections of train.py's evaluation, with its category ids.
    evaluated = _by_image(json.loads((output / "predictions_0.json").read_text()))
    predicted = _by_image(entries)
    assert set(predicted) == set(evaluated)
    for image_id, mine in predicted.items():
        assert [e["category_id"] for e in mine] == [e["category_id"] for e in evaluated[image_id]]
        np.testing.assert_allclose([e["bbox"] for e in mine], [e["bbox"] for e in evaluated[image_id]], atol=1e-3)


@pytest.mark.slow
def test_a_keypoint_checkpoint_draws_and_writes_keypoints(synthetic_kp_root, tmp_path):
    root = _small_copy(synthetic_kp_root, tmp_path / "kp", {"train": 2, "val": 2})
    model = ["--dataset", "coco_kp", "--model", "keypointrcnn_tiny_fpn"]
    output = _train(tmp_path / "train", *model, "--data-path", str(root), detections=2, rois=8)
    images = sorted((root / "val2017").iterdir())
    status, _ = _predict(
        str(root / "val2017"), "--checkpoint", str(output / "checkpoint.pth"), "--output-dir", str(tmp_path / "p"),
        "--score-thresh", "0", "--annotations", str(root / "annotations" / "person_keypoints_val2017.json"),
    )  # fmt: skip
    assert status == 0
    entries = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert entries and {e["file_name"] for e in entries} == {p.name for p in images}
    for entry in entries:
        assert set(entry) == {"image_id", "category_id", "score", "bbox", "keypoints", "file_name"}
        assert entry["category_id"] == 1 and len(entry["keypoints"]) == 51
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(root / "annotations" / "person_keypoints_val2017.json"))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(entries), "keypoints")
        evaluation.evaluate()
    for path in images:
        picture = _read_rgb(tmp_path / "p" / f"{path.stem}.png")
        assert picture.shape == _read_rgb(path).shape and not torch.equal(picture, _read_rgb(path))


# ----------------------------------------------------------------------------- file names


@pytest.mark.slow
def test_images_with_the_same_name_in_two_folders_get_two_pictures(run, tmp_path):
    wide, tall = (next(p for p in run["images"] if _read_rgb(p).shape[1:] == shape) for shape in [(96, 128), (128, 96)])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(wide, tmp_path / "a" / "x.jpg")
    shutil.copy(tall, tmp_path / "b" / "x.jpg")
    out = tmp_path / "out"
    status, printed = _predict(
        str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b"), "--checkpoint", str(run["checkpoint"]),
        "--output-dir", str(out), "--score-thresh", "1",
    )  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json", "x.png", "x_2.png"]
    # Nothing drawn and no upscaling: each picture is its own image.
    assert torch.equal(_read_rgb(out / "x.png"), _read_rgb(wide))
    assert torch.equal(_read_rgb(out / "x_2.png"), _read_rgb(tall))
    entries = json.loads((out / "predictions.json").read_text())
    assert {(e["image_id"], e["file_name"]) for e in entries} == {(1, "x.jpg"), (2, "x.jpg")}
    assert f"{out / 'x.png'}" in printed and f"{out / 'x_2.png'}" in printed


@pytest.mark.slow
def test_input_pngs_in_the_output_folder_are_never_overwritten(run, tmp_path):
    source = run["images"][0]
    image = Image.open(source).convert("RGB")
    image.save(tmp_path / "x.png")
    before = (tmp_path / "x.png").read_bytes()
    status, _ = _predict(
        str(tmp_path), "--checkpoint", str(run["checkpoint"]), "--output-dir", str(tmp_path), "--score-thresh", "1"
    )
    assert status == 0
    assert (tmp_path / "x.png").read_bytes() == before
    # nothing drawn: the picture is the image
    assert torch.equal(_read_rgb(tmp_path / "x_2.png"), _read_rgb(tmp_path / "x.png"))


# ----------------------------------------------------------------------------- bad input


def _bad_input(case: str, root: Path, tmp_path: Path) -> tuple[list[str], str]:
    """The command line of a bad-input case and what its error line must name. Each is found before the checkpoint
    is read (but the two about the checkpoint), so a path to none does for the others."""
    image = sorted((root / "val2017").iterdir())[0]
    checkpoint = ["--checkpoint", str(tmp_path / "checkpoint.pth")]
    if case == "missing input":
        return [str(tmp_path / "nowhere.jpg"), *checkpoint], f"{tmp_path / 'nowhere.jpg'} does not exist"
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images here")
        return [str(tmp_path / "empty"), *checkpoint], f"{tmp_path / 'empty'}: no image files"
    if case == "not an image":
        (tmp_path / "folder").mkdir()
        shutil.copy(image, tmp_path / "folder" / "a.jpg")
        (tmp_path / "folder" / "b.jpg").write_text("a text file named like an image")
        return [str(tmp_path / "folder"), *checkpoint], f"{tmp_path / 'folder' / 'b.jpg'}: not an image"
    if case == "state dict":
        torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), tmp_path / "checkpoint.pth")
        return [
            str(image),
            *checkpoint,
        ], f"--checkpoint: {tmp_path / 'checkpoint.pth'} holds no maskrcnn_resnet50_fpn weights"
    if case == "missing checkpoint":
        return [
            str(image),
            *checkpoint,
        ], f"--checkpoint: model checkpoint file {tmp_path / 'checkpoint.pth'} does not exist"
    if case == "score above 1":
        return [str(image), *checkpoint, "--score-thresh", "2"], "--score-thresh: must be between 0 and 1, got 2"
    if case == "no images wanted":
        return [str(image), *checkpoint, "--max-images", "0"], "--max-images: must be at least 1, got 0"
    if case == "unlisted image":
        other = tmp_path / "other.jpg"
        shutil.copy(image, other)
        annotations = root / "annotations" / "instances_val2017.json"
        argv = [str(image), str(other), *checkpoint, "--annotations", str(annotations)]
        return argv, f"--annotations: {annotations} does not list other.jpg"
    raise AssertionError(case)


BAD_INPUTS = [
    "missing input", "empty folder", "not an image", "state dict", "missing checkpoint", "score above 1",
    "no images wanted", "unlisted image",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_error_line_and_status_2_before_anything_is_written(case, synthetic_root, tmp_path, capsys):
    argv, named = _bad_input(case, synthetic_root, tmp_path)
    out = tmp_path / "out"
    status = predict.cli([*argv, "--output-dir", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert named in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()  # each of these is found before any picture (or folder) is written


# ----------------------------------------------------------------------------- --ground-truth

GREY = (128, 128, 128)


def _exported_folder(root: Path) -> Path:
    """Two 64x64 grey PNGs named a.png in nested folders, as exports write them; the first has a car (a filled
    square) and a box-only bike at the bottom edge, the second nothing. Category 0 is a supercategory no one uses."""
    for folder in ("batch1/frames", "batch2/frames"):
        (root / "export" / folder).mkdir(parents=True)
        Image.new("RGB", (64, 64), GREY).save(root / "export" / folder / "a.png")
    images = [
        {"id": 0, "file_name": "batch1/frames/a.png", "width": 64, "height": 64},
        {"id": 1, "file_name": "batch2/frames/a.png", "width": 64, "height": 64},
    ]
    annotations = [
        {
            "id": 0,
            "image_id": 0,
            "category_id": 3,
            "bbox": [8, 8, 32, 32],
            "segmentation": [[8, 8, 40, 8, 40, 40, 8, 40]],
        },
        {"id": 1, "image_id": 0, "category_id": 7, "bbox": [30, 56, 20, 8], "segmentation": []},
    ]
    categories = [{"id": 0, "name": "vehicles"}, {"id": 3, "name": "car"}, {"id": 7, "name": "bike"}]
    path = root / "export" / "_annotations.coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _caption_pixels(picture: torch.Tensor, box_color: tuple[int, int, int]) -> int:
    """Pixels of caption text: neither the background grey nor the box colour."""
    pixels = picture.permute(1, 2, 0).reshape(-1, 3)
    other = (pixels != torch.tensor(GREY)).any(1) & (pixels != torch.tensor(box_color)).any(1)
    return int(other.sum())


def test_ground_truth_alone_draws_masks_boxes_and_names_at_their_pixels(tmp_path):
    annotations = _exported_folder(tmp_path)
    status, printed = _predict(
        str(tmp_path / "export"), "--ground-truth", str(annotations), "--output-dir", str(tmp_path / "out")
    )
    assert status == 0, printed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "a_2.png"]  # no predictions.json
    assert "batch1/frames/a.png: 2 annotations in" in printed and re.search(r"2 images in .* images/s\)", printed)
    picture = _read_rgb(tmp_path / "out" / "a.png")
    car, bike = pictures.PALETTE[2], pictures.PALETTE[3]  # labels 1..K in category id order: 0, 3, 7
    blended = [int(g * 0.55 + c * 0.45) for g, c in zip(GREY, car)]
    assert np.abs(picture[:, 34, 30].numpy().astype(int) - blended).max() <= 1  # inside the car's mask
    assert picture[:, 36, 8].tolist() == list(car)  # its box's left edge, below the caption
    assert picture[:, 2, 60].tolist() == list(GREY) and picture[:, 30, 55].tolist() == list(GREY)
    assert picture[:, 63, 40].tolist() == list(bike)  # the bike's box bottom edge, on the image's last row
    # The bike's caption lies wholly inside the picture: as many text pixels as the same caption drawn mid-image.
    bottom_half = picture[:, 44:, :]
    plain = torch.tensor(GREY, dtype=torch.uint8)[:, None, None].expand(3, 64, 64).clone()
    middle = pictures.draw_instances(plain, torch.tensor([[30.0, 20, 50, 28]]), ["bike"], [bike])
    assert _caption_pixels(bottom_half, bike) == _caption_pixels(middle, bike) > 10
    assert _read_rgb(tmp_path / "out" / "a_2.png").tolist() == plain.tolist()  # the other a.png: nothing to draw


@pytest.mark.slow
def test_ground_truth_beside_the_predictions(run, tmp_path):
    status, printed = _predict(
        str(run["images"][0].parent), "--checkpoint", str(run["checkpoint"]), "--ground-truth", str(run["annotations"]),
        "--output-dir", str(tmp_path), "--upscale-to", "256", "--score-thresh", repr(run["thresh"]),
    )  # fmt: skip
    assert status == 0, printed
    assert json.loads((tmp_path / "predictions.json").read_text()) == run["entries"]
    data = json.loads(run["annotations"].read_text())
    for path in run["images"]:
        alone = _read_rgb(run["pictures"] / f"{path.stem}.png")  # the predictions without --ground-truth
        both = _read_rgb(tmp_path / f"{path.stem}.png")
        width = alone.shape[-1]
        assert both.shape[-1] == 2 * width + pictures.SIDE_BY_SIDE_GAP
        assert torch.equal(both[..., -width:], alone)
        assert (both[..., width : width + pictures.SIDE_BY_SIDE_GAP] == 255).all()
        # the left: the image's annotations, in the model's colours (its labels are the category ids)
        image = next(i for i in data["images"] if i["file_name"] == path.name)
        annotation = next(a for a in data["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"])
        gt = pictures.GroundTruth(run["annotations"])
        x, y, w, h = annotation["bbox"]
        scale = both.shape[1] / image["height"]
        edge = both[:, round((y + h * 0.75) * scale), int(x * scale)]  # the box's left edge, below its caption
        assert edge.tolist() == list(pictures.PALETTE[annotation["category_id"] % len(pictures.PALETTE)]), gt.names

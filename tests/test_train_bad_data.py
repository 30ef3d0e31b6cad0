"""train.py on a broken dataset: one line on stderr naming the file, exit status 2, the output folder left as it was;
--skip-bad-images trains past an unreadable image."""

from pathlib import Path

import pytest
import torch

import train
from conftest import TINY_MODEL

# Tiny images and a light R-CNN sampling: a run that gets as far as its first batch takes seconds.

QUICK_RUN = [
    *TINY_MODEL, "--device", "cpu", "--min-size", "64", "--max-size", "96", "--print-freq", "1",
    "--seed", "0",
    "--epochs", "1", "-b", "2", "--model-kwargs", "box_batch_size_per_image=16", "rpn_pre_nms_top_n_train=50",
    "rpn_post_nms_top_n_train=50", "rpn_pre_nms_top_n_test=50", "rpn_post_nms_top_n_test=50",
]  # fmt: skip


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:400])


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _unknown_category(root: Path, edit_annotations) -> Path:
    return edit_annotations(root, "train", lambda d: d["annotations"][0].update(category_id=99))


def _tiny_boxes(root: Path, edit_annotations) -> Path:
    def change(data):
        for ann in data["annotations"]:
            ann["bbox"][2] = 0.5

    return edit_annotations(root, "train", change)


def _results_list_as_val(root: Path, edit_annotations) -> Path:
    return edit_annotations(
        root, "val", lambda d: [{"image_id": 999, "category_id": 44, "bbox": [1, 2, 3, 4], "score": 0.5}]
    )


def _not_json(root: Path, edit_annotations) -> Path:
    path = root / "annotations" / "instances_train2017.json"
    _write(path, "{not json")
    return path


def _missing_image(root: Path, edit_annotations) -> Path:
    path = root / "train2017" / "img_12.jpg"
    path.unlink()
    return path


def _corrupt_image(root: Path, edit_annotations) -> Path:
    # Every training image, so that whichever the first batch draws is bad.
    for name in ("img_987654.jpg", "img_12.jpg", "img_500001.jpg"):
        _truncate(root / "train2017" / name)
    return root / "train2017"


# damage(root, edit_annotations) -> the path the message must name; extra flags; a fragment of the message
BAD_DATA = {
    "annotation file not JSON": (_not_json, [], "is not valid JSON"),
    "unknown category id": (_unknown_category, [], "refers to category_id 99"),
    "image missing on disk": (_missing_image, [], "is missing (image id 12"),
    "nothing to train on": (_tiny_boxes, [], "nothing to train on"),
    "results file as annotations": (_results_list_as_val, [], "holds a JSON list"),
    "corrupt image in training": (_corrupt_image, ["-j", "0"], "cannot use image"),
    "corrupt image in a data worker": (_corrupt_image, ["-j", "1"], "cannot use image"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_gets_one_line_and_status_2(case, quirky_copy, edit_annotations, tmp_path, capsys):
    damage, flags, fragment = BAD_DATA[case]
    named = damage(quirky_copy, edit_annotations)
    output = tmp_path / "out"
    output.mkdir()
    (output / "model_0.pth").write_text("an earlier run's checkpoint")
    assert train.cli(["--data-path", str(quirky_copy), "--output-dir", str(output), *QUICK_RUN, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert str(named) in err[0] and fragment in err[0], err[0]
    assert "Traceback" not in err[0] and "DataLoader worker" not in err[0]
    assert sorted(p.name for p in output.iterdir()) == ["model_0.pth"]
    assert (output / "model_0.pth").read_text() == "an earlier run's checkpoint"


def test_corrupt_image_names_the_skip_flag(quirky_copy, tmp_path, capsys):
    _truncate(quirky_copy / "train2017" / "img_12.jpg")
    flags = ["--data-path", str(quirky_copy), "--output-dir", str(tmp_path), *QUICK_RUN, "-b", "3", "-j", "0"]
    assert train.cli(flags) == 2
    err = capsys.readouterr().err
    assert "img_12.jpg: cannot use image 12" in err and "or pass --skip-bad-images" in err


@pytest.mark.slow
def test_skip_bad_images_trains_past_an_unreadable_image(quirky_copy, tmp_path, capsys):
    bad = quirky_copy / "train2017" / "img_12.jpg"
    _truncate(bad)
    flags = [
        "--data-path",
        str(quirky_copy),
        "--output-dir",
        str(tmp_path),
        *QUICK_RUN,
        "-b",
        "3",
        "-j",
        "0",
        "--skip-bad-images",
    ]
    assert train.cli(flags) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(bad) in warnings[0], captured.err
    assert "Epoch: [0]" in captured.out
    assert torch.load(tmp_path / "checkpoint.pth", weights_only=True)["epoch"] == 0


def test_skip_bad_images_is_off_by_default():
    assert train.get_args_parser().parse_args([]).skip_bad_images is False
    assert train.get_args_parser().parse_args(["--skip-bad-images"]).skip_bad_images is True

"""reporting.py and report.py: the page of a run with known errors (what it shows, its gallery's pictures), of an
older run that recorded less, bad input, and the page as headless Chromium renders it."""

import base64
import copy
import html
import io
import json
import re
import shutil

import pytest
from browser import Page, find_chromium
from PIL import Image
from pycocotools import mask as mask_utils

import analysis
import engine
import report
import reporting
from analysis import _quiet_index
from conftest import load_json
from metrics_log import JsonlWriter

RUN_FLAGS = {"model": "maskrcnn_resnet50_fpn", "dataset": "coco", "epochs": 2, "world_size": 1}


def _known_errors(gt: dict) -> tuple[list[dict], dict]:
    """Every object of the val split found exactly (box and mask, score 0.9), but for three known errors: the first
    image's first object missed, a background detection on the second image, a wrong class on the third's."""
    coco = _quiet_index(copy.deepcopy(gt))
    detections, images = [], [image["id"] for image in gt["images"]]
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    for annotation in gt["annotations"]:
        if annotation["iscrowd"]:
            continue
        rle = coco.annToRLE(annotation)
        counts = rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        detections.append({"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                           "bbox": annotation["bbox"], "score": 0.9,
                           "segmentation": {"size": rle["size"], "counts": counts}})  # fmt: skip
    first = next(d for d in detections if d["image_id"] == images[0])
    detections.remove(first)
    height, width = sizes[images[1]]
    corner = mask_utils.encode(_box_mask(height, width))
    background = {"image_id": images[1], "category_id": gt["categories"][0]["id"], "bbox": [0.0, 0.0, 6.0, 6.0]}
    detections.append({**background, "score": 0.95,
                       "segmentation": {"size": corner["size"], "counts": corner["counts"].decode()}})  # fmt: skip
    confused = next(d for d in detections if d["image_id"] == images[2])
    others = sorted({c["id"] for c in gt["categories"]} - {confused["category_id"]})
    confused["category_id"] = others[0]
    return detections, {"missed": images[0], "background": images[1], "confused": images[2]}


def _box_mask(height: int, width: int):
    import numpy as np

    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask[:6, :6] = 1
    return mask


def _write_run(directory, records: list[dict]) -> None:
    writer = JsonlWriter(directory / "metrics.jsonl")
    for record in records:
        writer.write(record)
    writer.close()


def _history() -> list[dict]:
    """Two epochs' training records and evaluations, as engine.py writes them."""
    records = []
    for epoch in range(2):
        for iteration in range(3):
            numbers = {"lr": 0.01, "loss": 2.0 - epoch - iteration / 10, "loss_mask": 0.5, "iter_time": 1.0}
            records.append(engine.training_record(epoch, iteration, 3, numbers))
        ap = {"AP": 0.1 + epoch / 10, "AP50": 0.3, "AP75": 0.1}
        per_category = {"disc": {"AP": 0.2, "AP50": 0.4, "AP75": 0.2}, "bars": {"AP": 0.1, "AP50": 0.2, "AP75": 0.0}}
        numbers = {"bbox": ap, "segm": ap, "per_category": {"bbox": per_category, "segm": per_category}}
        records.append(engine.evaluation_record(numbers, epoch, global_iteration=3 * (epoch + 1)))
    return records


@pytest.fixture(scope="module")
def analysed_run(synthetic_root, tmp_path_factory):
    """A run directory whose last evaluation has the known errors, analysed as engine.py does it."""
    gt = load_json(synthetic_root, "val")
    detections, where = _known_errors(gt)
    body = analysis.analyze_evaluation(copy.deepcopy(gt), detections, ["bbox", "segm"], synthetic_root / "val2017")
    directory = tmp_path_factory.mktemp("run")
    command = ["train.py", "--data-path", str(synthetic_root), "--epochs", "2"]
    analysed = {"type": "analysis", "of": "eval", "epoch": 1, **body, "timestamp": 1.0e9}
    _write_run(directory, [engine.run_record(RUN_FLAGS, command), *_history(), analysed])
    path = reporting.write_report(directory)
    return directory, path, where, gt


def _images(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/\w+;base64,([^"]+)"', page)
    ]


def test_the_page_shows_the_run_its_scores_and_the_known_errors(analysed_run):
    directory, path, where, gt = analysed_run
    page = path.read_text()
    assert path == directory / "report.html"
    assert f"<title>Report: {directory.name}</title>" in page and "Not in this report" not in page
    assert "train.py --data-path" in page and "<td>maskrcnn_resnet50_fpn</td>" in page  # the command and flags
    for section in ("Training curves", "AP", "Errors", "Worst images"):
        assert f"<h2>{section}</h2>" in page
    assert page.count('<table class="sortable">') == 2 + 2  # the per-category tables of the scores and errors
    # three figures of curves, a PR breakdown and a confusion matrix per IoU type, then the gallery
    pictures = _images(page)
    assert len(pictures) == 3 + 2 * 2 + 3
    assert all(picture.size[0] > 100 for picture in pictures)
    # the gallery: the three images with an error, each with its count
    files = {image["id"]: image["file_name"] for image in gt["images"]}
    for kind, image_id in where.items():
        assert re.search(rf"<b>{files[image_id]}</b>: [^<]*\b1 {'on background' if kind == 'background' else kind}",
                         page), kind  # fmt: skip


def test_the_gallery_draws_ground_truth_beside_the_detections(analysed_run, synthetic_root):
    directory, path, where, gt = analysed_run
    pictures = _images(path.read_text())[-3:]
    image = next(i for i in gt["images"] if i["id"] == where["missed"])
    picture = pictures[0]  # the images are ordered by errors, then by id: the missed one is first
    scale = max(1.0, reporting.GALLERY_UPSCALE / min(image["width"], image["height"]))
    width = round(image["width"] * scale)
    assert picture.size == (2 * width + 4, round(image["height"] * scale))
    left, right = (
        picture.crop((0, 0, width, picture.size[1])),
        picture.crop((width + 4, 0, picture.size[0], picture.size[1])),
    )
    assert left.tobytes() != right.tobytes()  # the missed object is drawn on the left only
    original = Image.open(synthetic_root / "val2017" / image["file_name"]).convert("RGB").resize(left.size)
    assert _difference(left, original) > _difference(right, original)


def _difference(a: Image.Image, b: Image.Image) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


def test_an_older_run_gets_a_page_that_says_what_it_lacks(tmp_path):
    _write_run(tmp_path, _history())  # no run record, no analysis (before report pages)
    page = reporting.write_report(tmp_path).read_text()
    lacking = html.unescape(page.split("<h2>Not in this report</h2>")[1].split("</section>")[0])
    assert "the run's command and flags" in lacking and "the error analysis, the confusion matrix" in lacking
    assert "--test-only --resume RUN/checkpoint.pth" in lacking  # how to add them
    assert "<h2>Training curves</h2>" in page and len(_images(page)) == 3


def test_a_moved_image_is_said_in_its_place(analysed_run, tmp_path):
    directory, _, where, gt = analysed_run
    moved = tmp_path / "run"
    shutil.copytree(directory, moved)
    lines = (moved / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    record["worst_images"][0]["path"] = str(tmp_path / "gone.jpg")
    (moved / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    page = reporting.write_report(moved).read_text()
    assert f"Cannot read {tmp_path / 'gone.jpg'}" in page and len(_images(page)) == 3 + 4 + 2


@pytest.mark.parametrize("content, problem", [
    (None, "not a run directory (no metrics.jsonl in it)"),
    ('{"type": "train"}\nnot json\n', "line 2 is not a metrics record"),
])  # fmt: skip
def test_bad_input_is_one_line_and_status_2(tmp_path, capsys, content, problem):
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    assert report.cli([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}") and problem in err and err.count("\n") == 1
    assert not (tmp_path / "report.html").exists()


def test_a_line_a_killed_run_cut_off_is_skipped(tmp_path, capsys):
    records = _history()
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps(records[0]) + '\n{"type": "train", "epo\n' + json.dumps(records[1]) + "\n"
    )
    assert report.cli([str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'report.html'}" in capsys.readouterr().out


def test_chromium_renders_the_page_on_a_laptop_and_a_phone(analysed_run, tmp_path):
    """One page load in headless Chromium: its title, the tables, every image decoded, no error reported, sorting
    by a click, no sideways scrolling at a phone's width; a screenshot of each."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium package)")
    _, path, _, _ = analysed_run
    with Page(executable, tmp_path / "profile") as page:
        page.resize(1280, 900)
        page.load(path)
        assert page.evaluate("document.title") == path.read_text().split("<title>")[1].split("</title>")[0]
        assert page.evaluate("document.querySelectorAll('table').length") >= 8
        images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(images) == 10 and all(complete and width > 0 for complete, width in images)
        page.screenshot(tmp_path / "laptop.png")
        first_column = (
            "Array.from(document.querySelector('table.sortable').tBodies[0].rows).map(r => r.cells[1].textContent)"
        )
        page.evaluate("document.querySelector('table.sortable th:nth-child(2)').click()")
        values = [float(v) for v in page.evaluate(first_column)]
        assert values == sorted(values)
        page.resize(390, 844, mobile=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(tmp_path / "phone.png")
        assert page.errors == []
    assert Image.open(tmp_path / "laptop.png").size[0] == 1280 and Image.open(tmp_path / "phone.png").size[0] == 390

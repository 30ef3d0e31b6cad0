"""Shared fixtures: the generator's synthetic datasets (shapes; stick figures with keypoints), a hand-written COCO
dataset with other quirks, and copies of it to break; and helpers several test files import (`from conftest import`)."""

import argparse
import contextlib
import io
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tiny_models  # noqa: E402, F401 - registers the small models with torchvision, in this process

import synthetic  # noqa: E402
import synthetic_people  # noqa: E402

QUIRKY_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "thing"},
    {"id": 3, "name": "car", "supercategory": "thing"},
    {"id": 44, "name": "bottle", "supercategory": "thing"},
]


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """torch's thread count as it was before each test: the benchmarks that tests run in-process set it (to 1, for
    steady timings), and every later in-process test would otherwise run on one core."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=8, seed=0)


@pytest.fixture(scope="session")
def synthetic_kp_root(tmp_path_factory) -> Path:
    """The keypoint variant (stick figures with COCO person keypoints), small."""
    return synthetic_people.generate_keypoints(tmp_path_factory.mktemp("synthetic_kp"), num_train=24, num_val=8, seed=0)


def _ellipse_mask(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=1)
    return np.asarray(mask, dtype=np.uint8)


def _compressed_rle(binary: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(binary))
    return {"size": [int(binary.shape[0]), int(binary.shape[1])], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(binary: np.ndarray) -> dict:
    """COCO's crowd format, written independently of synthetic_coco: column-major runs, zeros first."""
    counts, current, run = [], 0, 0
    for value in binary.flatten(order="F").tolist():
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [int(binary.shape[0]), int(binary.shape[1])], "counts": counts}


def _bbox_of_mask(binary: np.ndarray) -> list[float]:
    return [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(binary)))]


def _poly_bbox(polygons: list[list[float]]) -> list[float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _polygon_ann(polygons: list[list[float]], category_id: int, bbox: list[float] | None = None) -> dict:
    return {
        "segmentation": polygons,
        "bbox": bbox or _poly_bbox(polygons),
        "area": 100.0,
        "iscrowd": 0,
        "category_id": category_id,
    }


def _mask_ann(segmentation: dict, binary: np.ndarray, category_id: int, iscrowd: int) -> dict:
    return {
        "segmentation": segmentation,
        "bbox": _bbox_of_mask(binary),
        "area": float(binary.sum()),
        "iscrowd": iscrowd,
        "category_id": category_id,
    }


def _draw_image(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 80, 3)))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle([w // 8, h // 8, w // 2, h // 2], fill=(220, 40, 40))
    draw.ellipse([w // 2, h // 2, w - 4, h - 4], fill=(40, 200, 90))
    return image.convert(mode)


QuirkyImage = tuple[int, tuple[int, int], str, list[dict]]  # image id, (width, height), PIL mode, annotations
TWO_PARTS = [[10.0, 10.0, 30.0, 10.0, 30.0, 40.0, 10.0, 40.0], [50.0, 20.0, 70.0, 20.0, 60.0, 50.0]]
RLE_72X120 = _ellipse_mask(72, 120, (8, 30, 60, 100))
CROWD_90 = _ellipse_mask(90, 90, (40, 40, 85, 80))


def _quirky_train_images() -> list[QuirkyImage]:
    return [
        # Kept for training: a two-part polygon and a box running off the image (clamped).
        (
            987654,
            (100, 80),
            "RGB",
            [_polygon_ann(TWO_PARTS, 1), _polygon_ann([[80.0, 60.0, 110.0, 60.0, 110.0, 90.0, 80.0, 90.0]], 44)],
        ),
        # Grayscale, compressed RLE only.
        (12, (72, 120), "L", [_mask_ann(_compressed_rle(RLE_72X120), RLE_72X120, 3, 0)]),
        # CMYK, a crowd region (uncompressed RLE) next to a polygon.
        (
            500001,
            (90, 90),
            "CMYK",
            [
                _mask_ann(_uncompressed_rle(CROWD_90), CROWD_90, 44, 1),
                _polygon_ann([[5.0, 5.0, 35.0, 5.0, 20.0, 30.0]], 3),
            ],
        ),
        # Dropped for training: only a degenerate box (width 0) and a one-pixel-wide box.
        (
            77,
            (100, 80),
            "RGB",
            [
                _polygon_ann([[40.0, 10.0, 40.0, 20.0, 40.0, 30.0]], 1, bbox=[40.0, 10.0, 0.0, 20.0]),
                _polygon_ann([[5.0, 5.0, 6.0, 5.0, 6.0, 30.0, 5.0, 30.0]], 3),
            ],
        ),
        (300000, (72, 120), "RGB", []),  # no annotations at all
        # only a crowd region
        (4242, (90, 90), "RGB", [_mask_ann(_uncompressed_rle(CROWD_90), CROWD_90, 1, 1)]),
    ]


def _quirky_val_images() -> list[QuirkyImage]:
    return [
        # A two-part polygon and a degenerate box (width 0) with a mask of its own.
        (
            2000003,
            (100, 80),
            "RGB",
            [
                _polygon_ann(TWO_PARTS, 1),
                _polygon_ann([[85.0, 10.0, 85.0, 40.0, 85.0, 70.0]], 3, bbox=[85.0, 10.0, 0.0, 60.0]),
                _polygon_ann([[60.0, 50.0, 95.0, 50.0, 95.0, 75.0, 60.0, 75.0]], 44),
            ],
        ),
        # Grayscale: compressed RLE and a polygon.
        (
            1500000,
            (72, 120),
            "L",
            [
                _mask_ann(_compressed_rle(RLE_72X120), RLE_72X120, 3, 0),
                _polygon_ann([[4.0, 4.0, 40.0, 4.0, 40.0, 24.0, 4.0, 24.0]], 1),
            ],
        ),
        # CMYK: a crowd region (uncompressed RLE) and a polygon.
        (
            999,
            (90, 90),
            "CMYK",
            [
                _mask_ann(_uncompressed_rle(CROWD_90), CROWD_90, 44, 1),
                _polygon_ann([[5.0, 5.0, 35.0, 5.0, 20.0, 30.0]], 44),
            ],
        ),
        (1750000, (100, 80), "RGB", []),  # no annotations
    ]


def _quirky_split(root: Path, split: str) -> None:
    """Write the images of `split` and its annotation file (which has no "info" key)."""
    images, annotations = [], []
    for image_id, size, mode, anns in _quirky_train_images() if split == "train" else _quirky_val_images():
        entry = {"id": image_id, "file_name": f"img_{image_id}.jpg", "width": size[0], "height": size[1]}
        images.append((entry, _draw_image(size, mode, seed=image_id % 1000)))
        for ann in anns:
            ann.update(id=(7000 if split == "train" else 907000) + 13 * len(annotations), image_id=image_id)
            annotations.append(ann)
    synthetic.write_split(root, split, images, annotations, QUIRKY_CATEGORIES, quality=90)


@pytest.fixture(scope="session")
def quirky_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quirky")
    _quirky_split(root, "train")
    _quirky_split(root, "val")
    return root


def _exported_split(synthetic: Path, root: Path, split: str) -> None:
    """A synthetic split as labelme, CVAT and Roboflow export COCO: ids from 0, no area or iscrowd, no crowd regions,
    a supercategory listed as category 0 that no annotation uses, images in nested folders. Beside it,
    completed.json: the same as COCO would have it: area (the generator's, from pycocotools) and iscrowd written in,
    annotation ids from 1."""
    data = load_json(synthetic, split)
    new_category = {c["id"]: i for i, c in enumerate(data["categories"], start=1)}
    new_image = {image["id"]: i for i, image in enumerate(data["images"])}
    folder = root / split
    images = []
    for image in data["images"]:
        file_name = f"batch{new_image[image['id']] % 2}/frames/{image['file_name']}"
        (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic / f"{split}2017" / image["file_name"], folder / file_name)
        images.append({**image, "id": new_image[image["id"]], "file_name": file_name})
    completed = [
        {**a, "id": i, "image_id": new_image[a["image_id"]], "category_id": new_category[a["category_id"]]}
        for i, a in enumerate((a for a in data["annotations"] if not a["iscrowd"]), start=1)
    ]
    categories = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
        {"id": new_category[c["id"]], "name": c["name"], "supercategory": "shapes"} for c in data["categories"]
    ]
    exported = [{**{k: v for k, v in a.items() if k not in ("area", "iscrowd")}, "id": a["id"] - 1} for a in completed]
    for name, annotations in (("_annotations.coco.json", exported), ("completed.json", completed)):
        contents = {"images": images, "annotations": annotations, "categories": categories}
        (folder / name).write_text(json.dumps(contents))


@pytest.fixture(scope="session")
def exported_root(synthetic_root, tmp_path_factory) -> Path:
    """The synthetic dataset as exporting tools write it (_exported_split): <root>/{train,val}/_annotations.coco.json
    with the images in folders below."""
    root = tmp_path_factory.mktemp("exported")
    for split in ("train", "val"):
        _exported_split(synthetic_root, root, split)
    return root


@pytest.fixture(params=["synthetic", "quirky"])
def any_root(request) -> Path:
    """Each test that takes this runs on both datasets."""
    return request.getfixturevalue(f"{request.param}_root")


@pytest.fixture
def quirky_copy(quirky_root, tmp_path) -> Path:
    """A private copy of the quirky dataset, for a test to break."""
    return Path(shutil.copytree(quirky_root, tmp_path / "quirky_copy"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache ($TORCH_HOME/hub/checkpoints) for a test to fill with stand-in weight files."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def edit_annotations() -> Callable:
    """edit(root, split, change): rewrite a split's annotation file with `change` applied to its dict
    (in place, or replaced by what `change` returns); returns the file's path."""

    def edit(root: Path, split: str, change: Callable[[dict], dict | list | None]) -> Path:
        path = root / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        replaced = change(data)
        path.write_text(json.dumps(data if replaced is None else replaced))
        return path

    return edit


# ----------------------------------------------------------------------------- helpers several test files share


def load_json(root: Path, split: str) -> dict:
    with open(root / "annotations" / f"instances_{split}2017.json") as f:
        return json.load(f)


def pycoco(root: Path, split: str) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(root / "annotations" / f"instances_{split}2017.json"))


def find_ann(data: dict, predicate) -> dict:
    matches = [a for a in data["annotations"] if predicate(a)]
    assert matches, "the fixture lacks an annotation the test needs"
    return matches[0]


def image_size(data: dict, image_id: int) -> tuple[int, int]:
    info = next(img for img in data["images"] if img["id"] == image_id)
    return info["height"], info["width"]


def is_polygon(ann: dict) -> bool:
    return isinstance(ann["segmentation"], list)


def pycocotools_rles(binary: np.ndarray) -> list[bytes]:
    """The reference's encoding: one (H, W) mask at a time, in Fortran order."""
    return [mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"] for mask in binary]


def model_like_masks(count: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 mask probabilities like a trained model's (high inside an ellipse, soft edges) and boxes
    clipped to the image as the model clips them: any size, on every border, as tall as the image."""
    rng = np.random.default_rng(seed)
    sides = np.exp(rng.uniform(np.log(1), np.log(1.2 * max(height, width)), size=(count, 2)))
    centres = rng.uniform(0, 1, size=(count, 2)) * [width, height]
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    boxes[: count // 8] = [0, 0, width, height]  # whole image (expanded past every border)
    boxes[count // 8 : count // 4, 1::2] = [0, height]  # as tall as the image
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    yy, xx = np.meshgrid(np.linspace(-1, 1, 28), np.linspace(-1, 1, 28), indexing="ij")
    centre = rng.uniform(-0.3, 0.3, size=(count, 2, 1, 1))
    radius = rng.uniform(0.3, 0.9, size=(count, 2, 1, 1))
    distance = ((xx - centre[:, 0]) / radius[:, 0]) ** 2 + ((yy - centre[:, 1]) / radius[:, 1]) ** 2
    logits = (1 - distance) * rng.uniform(2, 10, size=(count, 1, 1))
    masks = torch.from_numpy(1 / (1 + np.exp(-logits))).float()[:, None]
    return masks, torch.from_numpy(boxes).float()


@pytest.fixture(scope="session")
def standin_resnet50(tmp_path_factory) -> Path:
    """A resnet50.pth that behaves like ImageNet weights (synthetic.standin_resnet50: BatchNorm statistics calibrated
    on normalised random batches, zero-initialised residual branches), written once a session (100 MB) and alone in
    its folder, so that the folder serves as a --data-path whose default backbone file it is. Tests read it, never
    write it: a test that needs it at a path of its own links it there (os.link: a second name, no bytes)."""
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.pth"
    synthetic.write_standin_resnet50(path)
    return path


def reference_args(**changes) -> argparse.Namespace:
    """The flags of torchvision's reference train.py (today's), with its defaults, as its checkpoints pickle them."""
    defaults = dict(
        data_path="/datasets01/COCO/022719/", dataset="coco", model="maskrcnn_resnet50_fpn", device="cuda",
        batch_size=2, epochs=26, workers=4, opt="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4,
        norm_weight_decay=None, lr_scheduler="multisteplr", lr_step_size=8, lr_steps=[16, 22], lr_gamma=0.1,
        print_freq=20, output_dir=".", resume="", start_epoch=0, aspect_ratio_group_factor=3, rpn_score_thresh=None,
        trainable_backbone_layers=None, data_augmentation="hflip", sync_bn=False, test_only=False,
        use_deterministic_algorithms=False, world_size=8, dist_url="env://", weights=None,
        weights_backbone="ResNet50_Weights.IMAGENET1K_V1", amp=False, use_copypaste=False, backend="pil",
        use_v2=False, distributed=True, rank=0, gpu=0, dist_backend="nccl",
    )  # fmt: skip
    return argparse.Namespace(**defaults | changes)


def write_reference_checkpoint(path: Path, checkpoint: dict, **arg_changes) -> Path:
    """A checkpoint as the reference's train.py saves it (utils.save_on_master): model, optimizer, lr_scheduler, args
    (an argparse.Namespace, pickled) and epoch, from one of train.py's checkpoint dicts."""
    saved = {key: checkpoint[key] for key in ("model", "optimizer", "lr_scheduler", "epoch")}
    torch.save(saved | {"args": reference_args(**arg_changes)}, path)
    return path


# The tests' small Mask R-CNN (tests/tiny_models.py): for every test whose point is not the full ResNet-50.
TINY_MODEL = ["--model", "maskrcnn_tiny_fpn", "--weights-backbone", "none"]
TINY_MODELS_SCRIPT = str(ROOT / "tests" / "tiny_models.py")


def script(name: str) -> list[str]:
    """The command that runs one of the project's scripts (train.py, predict.py) with the tests' small models
    registered, for subprocess.run; torchrun takes the same without sys.executable."""
    return [sys.executable, TINY_MODELS_SCRIPT, name]


def run_train(flags: list) -> tuple[int, str, str]:
    """train.cli in this process: its exit status, stdout and stderr."""
    import train  # here: conftest is imported before the tests put the project on sys.path

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train.cli([str(flag) for flag in flags])
    return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- a second annotation format


class CsvReader:
    """A second annotation format, in a few lines: one box per line, "file_name,width,height,category,x,y,w,h"
    (README, "Where to change what": a dataset format)."""

    def read(self, path: Path):
        rows = [line.split(",") for line in path.read_text().splitlines()]
        names = sorted({row[0] for row in rows})
        sizes = {row[0]: (int(row[1]), int(row[2])) for row in rows}
        categories = sorted({row[3] for row in rows})
        return _annotations().AnnotationTable(
            source=path,
            image_ids=np.arange(1, len(names) + 1),
            widths=np.array([sizes[n][0] for n in names]),
            heights=np.array([sizes[n][1] for n in names]),
            file_names=names,
            ann_ids=np.arange(1, len(rows) + 1),
            image_of_ann=np.array([names.index(row[0]) for row in rows]),
            category_ids=np.array([categories.index(row[3]) + 1 for row in rows]),
            boxes_xywh=np.array([[float(v) for v in row[4:8]] for row in rows], dtype=np.float32),
            crowd=np.zeros(len(rows), dtype=bool),
            segmentations=[b"[]"] * len(rows),
            keypoints=[None] * len(rows),
            categories=[_annotations().Category(i + 1, name) for i, name in enumerate(categories)],
        )

    def ground_truth(self, path: Path) -> dict:
        table = self.read(path)
        images = [
            {"id": int(i), "file_name": n, "width": int(w), "height": int(h)}
            for i, n, w, h in zip(table.image_ids, table.file_names, table.widths, table.heights)
        ]
        anns = [
            {"id": int(a), "image_id": int(table.image_ids[r]), "category_id": int(c), "bbox": b.tolist(),
             "area": float(b[2] * b[3]), "iscrowd": 0}
            for a, r, c, b in zip(table.ann_ids, table.image_of_ann, table.category_ids, table.boxes_xywh)
        ]  # fmt: skip
        return {
            "images": images,
            "annotations": anns,
            "categories": [{"id": c.id, "name": c.name} for c in table.categories],
        }


def _annotations():
    import annotations  # here: conftest is imported before the tests put the project on sys.path

    return annotations


def write_csv_split(root: Path, split: str, count: int | None = None) -> Path:
    """`root`'s COCO split (the first `count` images) as CsvReader's format: <split>.csv, one box per line."""
    data = json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())
    images = {image["id"]: image for image in data["images"][:count]}
    names = {category["id"]: category["name"] for category in data["categories"]}
    lines = [
        ",".join(map(str, [images[a["image_id"]]["file_name"], images[a["image_id"]]["width"],
                           images[a["image_id"]]["height"], names[a["category_id"]], *a["bbox"]]))
        for a in data["annotations"] if a["image_id"] in images and not a.get("iscrowd")
    ]  # fmt: skip
    path = root.parent / f"{root.name}_{split}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path

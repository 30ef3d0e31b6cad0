"""annotations.py: the reader's table, segmentation texts kept compact and exact, and a second format served by
CocoDetection through a reader of its own."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import annotations
import coco_utils
from conftest import CsvReader


@pytest.mark.parametrize(
    "texts, packed",
    [
        ([b"[[1.5, 2,3.25,4,5,6]]", b"[]", b"[[0,0,10,0,10,10],[-1.0, 2.5,3,4,5,6]]"], True),
        ([b"[[1,2,3,4,5,6]]", b'{"size":[2,3],"counts":"0c1"}', b"[[1e-05,2,3,4,5,6]]"], False),
        ([], True),
    ],
    ids=["polygons", "rle and exponents", "none"],
)
def test_packed_texts_round_trip(texts, packed):
    store = annotations.PackedTexts(texts)
    assert store.packed is packed
    assert len(store) == len(texts)
    assert [t.rstrip(b" ") for t in store[0 : len(texts)]] == texts
    assert [t.rstrip(b" ") for t in store[1:2]] == texts[1:2]
    assert store.first_bytes() == bytes(t[0] for t in texts)


def test_the_coco_reader_gives_the_files_columns(quirky_root):
    path = quirky_root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    table = annotations.COCO_JSON.read(path)
    assert table.image_ids.tolist() == [img["id"] for img in data["images"]]
    assert table.file_names == [img["file_name"] for img in data["images"]]
    assert table.ann_ids.tolist() == [a["id"] for a in data["annotations"]]
    assert [table.image_ids[row] for row in table.image_of_ann] == [a["image_id"] for a in data["annotations"]]
    np.testing.assert_array_equal(table.boxes_xywh, np.array([a["bbox"] for a in data["annotations"]], np.float32))
    assert table.crowd.tolist() == [bool(a["iscrowd"]) for a in data["annotations"]]
    assert [json.loads(bytes(s)) for s in table.segmentations] == [a["segmentation"] for a in data["annotations"]]
    assert [(c.id, c.name) for c in table.categories] == [(c["id"], c["name"]) for c in data["categories"]]
    assert annotations.COCO_JSON.ground_truth(path) == data


def test_exported_files_get_coco_area_and_iscrowd_and_ids_from_1(tmp_path):
    """What exporters leave out is filled as COCO defines it; what a file gives is kept."""
    polygon = [[2, 2, 12, 2, 12, 7, 2, 7]]  # a 10 x 5 rectangle
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((3, 4), np.uint8), ((1, 16), (1, 15)))))
    rle["counts"] = rle["counts"].decode()
    entries = [
        {"id": 0, "image_id": 7, "category_id": 1, "bbox": [2, 2, 10, 5], "segmentation": polygon},
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 3], "segmentation": rle},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 3.5, 2], "segmentation": []},  # box-only exports
        {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 3, 2]},
        {"id": 4, "image_id": 7, "category_id": 1, "bbox": [0, 0, 3, 2], "area": 99.0, "iscrowd": 1},
    ]
    data = {"images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20}], "annotations": entries}
    data["categories"] = [{"id": 1, "name": "thing"}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(data))
    truth = annotations.COCO_JSON.ground_truth(path)["annotations"]
    polygon_area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygon, 20, 20))))
    assert [a["area"] for a in truth] == [polygon_area, 12.0, 7.0, 6.0, 99.0]
    assert [a["iscrowd"] for a in truth] == [0, 0, 0, 0, 1]
    assert [a["id"] for a in truth] == [1, 2, 3, 4, 5]


def test_a_second_format_needs_only_a_reader(quirky_root, tmp_path):
    """CocoDetection, its targets, its classes and the evaluation ground truth serve any AnnotationReader."""
    folder = quirky_root / "val2017"
    csv = tmp_path / "boxes.csv"
    csv.write_text(
        "img_999.jpg,90,90,cat,5,5,30,25\nimg_999.jpg,90,90,dog,40,40,45,40\nimg_2000003.jpg,100,80,cat,60,50,35,25\n"
    )
    dataset = coco_utils.CocoDetection(folder, csv, with_masks=False, reader=CsvReader())
    assert dataset.ids == [1, 2] and dataset.aspect_ratios == [100 / 80, 1.0]
    assert dataset.classes.names() == ["0", "cat", "dog"] and dataset.num_classes == 3
    image, target = dataset[1]
    assert image.size == (90, 90) and target["labels"].tolist() == [1, 2]
    assert target["boxes"].tolist() == [[5, 5, 35, 30], [40, 40, 85, 80]]
    ground_truth = coco_utils.get_coco_api_from_dataset(dataset)
    assert sorted(ground_truth.imgs) == [1, 2] and len(ground_truth.anns) == 3
    assert coco_utils.get_coco_api_from_dataset(torch.utils.data.Subset(dataset, [1])).getImgIds() == [2]

"""pictures.py: COCO entries (annotations and results) drawn at known pixels, as the report's gallery draws them."""

import torch

import pictures

GREY = (100, 100, 100)


def _grey(height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.tensor(GREY, dtype=torch.uint8)[:, None, None].expand(3, height, width).clone()


def test_an_entry_is_its_mask_box_and_caption_in_its_categorys_colour():
    square = [[20.0, 20.0, 50.0, 20.0, 50.0, 50.0, 20.0, 50.0]]  # a polygon: the box itself
    entry = {"category_id": 3, "bbox": [20.0, 20.0, 30.0, 30.0], "segmentation": square, "score": 0.87}
    picture = pictures.draw_entries(_grey(), [entry], {3: "car"})
    color = pictures.PALETTE[3]
    blended = [int(g * 0.55 + c * 0.45) for g, c in zip(GREY, color)]
    assert (picture[:, 40, 35].int() - torch.tensor(blended)).abs().max() <= 1  # inside the mask
    assert picture[:, 45, 20].tolist() == list(color)  # the box's left edge, below the caption
    assert picture[:, 5, 5].tolist() == list(GREY) and picture[:, 60, 60].tolist() == list(GREY)


def test_results_are_captioned_with_their_score_and_crowd_regions_as_such():
    box = [10.0, 10.0, 20.0, 20.0]
    detection = pictures.draw_entries(_grey(), [{"category_id": 1, "bbox": box, "score": 0.5}], {1: "a"})
    crowd = pictures.draw_entries(_grey(), [{"category_id": 1, "bbox": box, "iscrowd": 1}], {1: "a"})
    plain = pictures.draw_entries(_grey(), [{"category_id": 1, "bbox": box, "iscrowd": 0}], {1: "a"})
    text = [int((p != torch.tensor(GREY)[:, None, None]).any(0).sum()) for p in (plain, detection, crowd)]
    assert text[0] < text[1] < text[2]  # "a" < "a 0.50" < "a (crowd)": longer captions, more text pixels


def test_small_images_are_enlarged_with_their_masks_and_nothing_to_draw_leaves_the_image():
    entry = {
        "category_id": 2,
        "bbox": [4.0, 4.0, 8.0, 8.0],
        "segmentation": [[4.0, 4.0, 12.0, 4.0, 12.0, 12.0, 4.0, 12.0]],
    }
    picture = pictures.draw_entries(_grey(32, 32), [entry], {2: "b"}, upscale_to=128)
    assert picture.shape == (3, 128, 128)
    assert picture[:, 40, 40].tolist() != list(GREY) and picture[:, 100, 100].tolist() == list(GREY)  # mask at 4x
    assert torch.equal(pictures.draw_entries(_grey(), [], {}), _grey())

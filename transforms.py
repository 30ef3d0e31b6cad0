"""Train and evaluation pipelines on torchvision.transforms.v2 and tv_tensors.

Images leave the pipeline as uint8 tensors: they are a quarter of the size of float ones to
collate and copy, and engine.py converts them to float on the model's device.
"""

from collections.abc import Callable

from torchvision.transforms import v2

DATA_AUGMENTATIONS = ("hflip",)


def get_transform(train: bool, data_augmentation: str = "hflip") -> Callable:
    """The pipeline for a split; `data_augmentation` picks the training recipe (see DATA_AUGMENTATIONS)."""
    steps: list[Callable] = [v2.ToImage()]
    if train:
        if data_augmentation not in DATA_AUGMENTATIONS:
            raise ValueError(f"unknown data augmentation {data_augmentation!r}; choose one of {', '.join(DATA_AUGMENTATIONS)}")
        steps.append(v2.RandomHorizontalFlip(p=0.5))
        # Geometric augmentations can shrink a box to nothing; drop such boxes with their labels and masks.
        steps.append(v2.SanitizeBoundingBoxes(min_size=1))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)

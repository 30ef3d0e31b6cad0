"""What a model's labels mean (`Classes`): each label's category id, the categories' names, keypoint names and the
skeleton. A dataset provides it, a checkpoint keeps it, predict.py names its pictures by it; it lives here, apart from
the dataset stack, so that reading a checkpoint needs neither pycocotools nor the annotation readers."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Classes:
    """What a model's outputs mean: each label's category id (label 0, the background, maps to 0), the
    categories' names and, for keypoint models, the keypoint names and the skeleton to draw them with.
    A dataset provides it, a checkpoint keeps it (checkpoint.py), predict.py names its pictures by it."""

    label_to_category_id: list[int]
    categories: list[dict]  # {"id": ..., "name": ...} in id order
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_skeleton: list[list[int]] = field(default_factory=list)  # pairs of keypoints, 1-based

    @property
    def num_classes(self) -> int:
        """The classifier's outputs: one per label, with 0 the background."""
        return len(self.label_to_category_id)

    def names(self) -> list[str]:
        """The name of each label (a label without a category gets its category id)."""
        names = {c["id"]: c["name"] for c in self.categories}
        return [names.get(category_id, str(category_id)) for category_id in self.label_to_category_id]

    def category_labels(self) -> torch.Tensor:
        """The labels that stand for a category. With the reference's labels (the category ids, num_classes =
        largest id + 1) the ids between categories are labels too (COCO's 12, 26, ...): no category has them,
        yet the classifier scores them (weakly once trained, as much as any while untrained)."""
        ids = {c["id"] for c in self.categories}
        labels = [label for label, category_id in enumerate(self.label_to_category_id) if label and category_id in ids]
        return torch.tensor(labels, dtype=torch.int64)


def label_to_category_ids(category_ids: Sequence[int], contiguous: bool, min_num_classes: int = 0) -> list[int]:
    """The category id of each label (label 0, the background, maps to 0): contiguous labels 1..K in
    category id order, or the category ids themselves (then num_classes is the largest id + 1, or
    `min_num_classes` where a model trained on more ids is used: torchvision's COCO models have 91)."""
    ids = sorted(int(i) for i in category_ids)
    return [0, *ids] if contiguous else list(range(max(max(ids, default=0) + 1, min_num_classes)))

"""OpenImages-V7 point-wise mIoU, "p-mIoU" (GEM paper §4.1; training-free.md §3.1).

For each image only the classes present in it are evaluated. The score map of each such class is min-max scaled to
[0, 1] and thresholded at 0.5; the class's annotated points are then compared with the binary mask: a positive point
inside the mask is a true positive, outside a false negative; a negative point inside the mask is a false positive.
TP / FP / FN are accumulated per class over the dataset and p-mIoU is the mean of TP / (TP + FP + FN) over the
classes that have any of them.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class PointMIoU(Metric):
    """Point-annotation mIoU (percent), accumulated per class across images and processes.

    Args:
        num_classes: size of the global vocabulary (5,827 for OpenImages-V7 validation).
        threshold: threshold on the min-max scaled score map (0.5 in the benchmark guideline).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor

    def __init__(self, num_classes: int, threshold: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.threshold = threshold
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self,
        scores: torch.Tensor,
        classes: torch.Tensor,
        points: torch.Tensor,
        point_classes: torch.Tensor,
        point_positive: torch.Tensor,
    ) -> None:
        """Add one image.

        Args:
            scores: ``float [C, H, W]`` score maps of the classes present in the image.
            classes: ``int64 [C]`` global class ids of those maps (distinct).
            points: ``[P, 2]`` point coordinates ``(y, x)`` in pixels of the score maps (rounded down).
            point_classes: ``int64 [P]`` class of each point (must be one of ``classes``).
            point_positive: ``bool [P]`` True for a positive point (class present there), False for a negative one.
        """
        if scores.ndim != 3 or classes.shape != scores.shape[:1]:
            raise ValueError(
                f"Expected scores [C, H, W] and classes [C], got {tuple(scores.shape)} and {tuple(classes.shape)}."
            )
        if points.ndim != 2 or points.shape[1] != 2 or not (len(points) == len(point_classes) == len(point_positive)):
            raise ValueError("points must be [P, 2] with one class and one positive flag per point.")
        classes, point_classes = classes.long(), point_classes.to(classes.device).long()
        if len(torch.unique(classes)) != len(classes) or bool(((classes < 0) | (classes >= self.num_classes)).any()):
            raise ValueError(f"classes must be distinct ids in 0..{self.num_classes - 1}.")
        height, width = scores.shape[-2:]
        flat = scores.flatten(1).float()  # [C, HW]
        low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
        binary = (flat - low) / (high - low).clamp_min(1e-12) > self.threshold  # [C, HW]
        # map of each point's class to its row in ``scores``
        match = point_classes[:, None] == classes[None]  # [P, C]
        if not bool(match.any(dim=1).all()):
            raise ValueError("Every point's class must be one of `classes` (the classes present in the image).")
        row = match.long().argmax(dim=1)  # [P]
        yx = points.to(classes.device).long()
        if bool(((yx[:, 0] < 0) | (yx[:, 0] >= height) | (yx[:, 1] < 0) | (yx[:, 1] >= width)).any()):
            raise ValueError(f"Point coordinates must lie inside the {height}x{width} score map.")
        predicted = binary[row, yx[:, 0] * width + yx[:, 1]]  # [P]
        positive = point_positive.to(classes.device).bool()
        k = self.num_classes
        self.tp += torch.bincount(point_classes[positive & predicted], minlength=k).to(self.tp.device)
        self.fn += torch.bincount(point_classes[positive & ~predicted], minlength=k).to(self.fn.device)
        self.fp += torch.bincount(point_classes[~positive & predicted], minlength=k).to(self.fp.device)

    def compute(self) -> dict[str, torch.Tensor]:
        """``p-mIoU`` (percent) and per-class ``IoU`` (NaN where a class had no TP, FP or FN)."""
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        denominator = tp + fp + fn
        iou = torch.where(denominator > 0, tp / denominator.clamp_min(1), torch.nan)
        valid = denominator > 0
        mean = iou[valid].mean() if bool(valid.any()) else torch.tensor(float("nan"), dtype=torch.float64)
        return {"p-mIoU": 100 * mean, "IoU": 100 * iou}

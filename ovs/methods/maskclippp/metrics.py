"""Mask-classification accuracy with ground-truth masks (MaskCLIP++ ``MaskAccEvaluator``, spec §9.1)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MaskAccuracy(Metric):
    """mMaskAcc: mean over classes with GT masks of (correctly classified masks / GT masks), plus seen / unseen.

    Args:
        num_classes: K.
        seen: optional ``bool [K]`` of classes seen in training (``ovs.data.seen_mask``).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    correct: Tensor
    total: Tensor

    def __init__(self, num_classes: int, seen: Tensor | None = None) -> None:
        super().__init__()
        if seen is not None and (seen.dtype != torch.bool or seen.shape != (num_classes,)):
            raise ValueError(f"seen must be a bool tensor of shape ({num_classes},), got {seen.dtype} {seen.shape}.")
        self.num_classes = num_classes
        self.seen = seen
        self.add_state("correct", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Predicted and true class of each mask, both ``int64 [N]`` in ``0..K-1``."""
        if preds.shape != target.shape or preds.ndim != 1:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must be equal 1-D shapes.")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"Mask labels must lie in 0..{self.num_classes - 1}.")
        target = target.to(self.total.device)
        hits = preds.to(target.device) == target
        self.total += torch.bincount(target, minlength=self.num_classes)
        self.correct += torch.bincount(target[hits], minlength=self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        """``mask_acc`` and, with ``seen``, ``mask_acc_seen`` / ``mask_acc_unseen`` in percent (NaN if undefined)."""
        has_gt = self.total > 0
        accuracy = self.correct.double() / self.total.clamp_min(1).double()  # [K]
        result = {"mask_acc": _masked_mean(accuracy, has_gt)}
        if self.seen is not None:
            seen = self.seen.to(has_gt.device)
            result["mask_acc_seen"] = _masked_mean(accuracy, has_gt & seen)
            result["mask_acc_unseen"] = _masked_mean(accuracy, has_gt & ~seen)
        return result


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """100 × mean of ``values[mask]``; NaN when the mask is empty."""
    if not bool(mask.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
    return 100 * values[mask].mean()

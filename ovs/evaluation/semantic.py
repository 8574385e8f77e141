"""Semantic segmentation metrics from a streaming confusion matrix (maskclippp.md §9.1, training-free.md §9.6).

The state is an ``int64 [K, K + 1]`` confusion matrix, rows = ground truth, columns = prediction, column ``K``
collecting pixels predicted as "no class" (``ignore_index``: e.g. void predictions). Per image it is updated with a
single ``torch.bincount`` of ``(K + 1) * gt + pred`` over the valid (non-ignore) ground-truth pixels and summed
across processes (``dist_reduce_fx="sum"``).

Three averaging conventions (they differ only in classes that are predicted but absent from the ground truth):

* ``"detectron2"`` (current detectron2 ``SemSegEvaluator``, as MaskCLIP++ runs it): IoU and accuracy are defined only
  for classes with GT pixels (and union > 0); classes absent from the GT are excluded even if predicted.
  fwIoU = sum over those classes of (GT frequency x IoU).
* ``"detectron2_v0.6"`` (detectron2 v0.6 and the forks pinned to it: Mask2Former, FC-CLIP, SAN, CAT-Seg ...):
  ``mIoU = sum(IoU over classes with GT) / #(classes with GT or prediction)``, so a predicted-only class counts as
  IoU 0 in the mean; the per-class IoU is reported only for classes with GT (NaN otherwise, as v0.6 prints it).
* ``"mmseg"`` (mmseg ``IoUMetric``, SCLIP / NACLIP / ClearCLIP): IoU = I / U with NaN where U = 0, so a class that is
  only predicted counts with IoU 0 (also per class); accuracy NaN where a class has no GT pixel; means are
  ``nanmean``. Its mIoU equals ``detectron2_v0.6``'s. fwIoU (not reported by mmseg) uses detectron2's definition.

Both give pAcc = correct / valid pixels. Seen / unseen mIoU average the valid IoUs of a boolean class mask.
Values are percentages, as both references print them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from ovs.data.constants import IGNORE_INDEX

CONVENTIONS = ("detectron2", "detectron2_v0.6", "mmseg")


class SemanticSegMetric(Metric):
    """mIoU, fwIoU, mAcc, pAcc, per-class IoU / accuracy and seen / unseen mIoU.

    Args:
        num_classes: K.
        convention: ``"detectron2"``, ``"detectron2_v0.6"`` or ``"mmseg"`` (module docstring).
        ignore_index: ground-truth pixels with this value are skipped; predictions with it count as "no class".
        seen: optional ``bool [K]`` mask of classes seen in training (``ovs.data.seen_mask``).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    confmat: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        convention: str = "detectron2",
        ignore_index: int = IGNORE_INDEX,
        seen: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
        if seen is not None and (seen.dtype != torch.bool or seen.shape != (num_classes,)):
            raise ValueError(f"seen must be a bool tensor of shape ({num_classes},), got {seen.dtype} {seen.shape}.")
        self.num_classes = num_classes
        self.convention = convention
        self.ignore_index = ignore_index
        self.seen = seen
        self.add_state(
            "confmat", torch.zeros(num_classes, num_classes + 1, dtype=torch.int64), dist_reduce_fx="sum"
        )

    def update(
        self, preds: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]
    ) -> None:
        """Add predictions and ground truth: ``int64 [H, W]`` / ``[B, H, W]`` tensors or lists of ``[H, W]``."""
        pred_list = list(preds) if not isinstance(preds, torch.Tensor) or preds.ndim == 3 else [preds]
        target_list = list(target) if not isinstance(target, torch.Tensor) or target.ndim == 3 else [target]
        if len(pred_list) != len(target_list):
            raise ValueError(f"Got {len(pred_list)} predictions for {len(target_list)} targets.")
        k = self.num_classes
        for pred, gt in zip(pred_list, target_list):
            if pred.shape != gt.shape:
                raise ValueError(f"Prediction {tuple(pred.shape)} and target {tuple(gt.shape)} differ in shape.")
            if pred.is_floating_point() or gt.is_floating_point():
                raise ValueError("Predictions and targets must be integer class maps (take the argmax first).")
            pred, gt = pred.to(self.confmat.device).long(), gt.to(self.confmat.device).long()
            valid = gt != self.ignore_index
            bad_gt = valid & ((gt < 0) | (gt >= k))
            if bool(bad_gt.any()):
                raise ValueError(f"Target has values {torch.unique(gt[bad_gt]).tolist()} outside 0..{k - 1}.")
            no_class = pred == self.ignore_index
            bad_pred = ~no_class & ((pred < 0) | (pred >= k))
            if bool(bad_pred.any()):
                raise ValueError(f"Prediction has values {torch.unique(pred[bad_pred]).tolist()} outside 0..{k - 1}.")
            pred = pred.masked_fill(no_class, k)  # column K = "no class"
            index = (k + 1) * gt[valid] + pred[valid]  # [P]
            self.confmat += torch.bincount(index, minlength=k * (k + 1)).reshape(k, k + 1)

    def compute(self) -> dict[str, torch.Tensor]:
        """``mIoU``, ``fwIoU``, ``mAcc``, ``pAcc``, ``IoU`` [K], ``Acc`` [K] (NaN = undefined) and, with ``seen``,
        ``mIoU_seen`` / ``mIoU_unseen``; all in percent."""
        confmat = self.confmat.double()
        tp = confmat.diagonal()  # [K]
        gt_pixels = confmat.sum(dim=1)  # [K], includes "no class" predictions
        pred_pixels = confmat[:, : self.num_classes].sum(dim=0)  # [K]
        union = gt_pixels + pred_pixels - tp
        nan = torch.full_like(tp, float("nan"))
        has_gt = gt_pixels > 0
        acc = torch.where(has_gt, tp / gt_pixels.clamp_min(1), nan)
        if self.convention == "detectron2":
            iou_valid = has_gt & (union > 0)
        elif self.convention == "detectron2_v0.6":
            iou_valid = has_gt
        else:
            iou_valid = union > 0
        iou = torch.where(iou_valid, tp / union.clamp_min(1), nan)
        # classes entering the means: v0.6 also counts predicted-only classes, with IoU 0
        in_mean = union > 0 if self.convention == "detectron2_v0.6" else iou_valid
        iou_in_mean = torch.where(in_mean, torch.nan_to_num(iou, nan=0.0), nan)
        total = gt_pixels.sum()
        undefined = torch.tensor(float("nan"), dtype=torch.float64, device=tp.device)
        frequency = gt_pixels / total.clamp_min(1)  # [K]; IoU is defined wherever frequency > 0
        result = {
            "mIoU": 100 * _nanmean(iou_in_mean),
            "fwIoU": 100 * (frequency[has_gt] * iou[has_gt]).sum() if total > 0 else undefined,
            "mAcc": 100 * _nanmean(acc),
            "pAcc": 100 * tp.sum() / total if total > 0 else undefined,
            "IoU": 100 * iou,
            "Acc": 100 * acc,
        }
        if self.seen is not None:
            seen = self.seen.to(iou.device)
            result["mIoU_seen"] = 100 * _nanmean(iou_in_mean[seen])
            result["mIoU_unseen"] = 100 * _nanmean(iou_in_mean[~seen])
        return result


def _nanmean(values: torch.Tensor) -> torch.Tensor:
    """Mean of the non-NaN entries; NaN when there are none."""
    valid = ~torch.isnan(values)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
    return values[valid].mean()

"""Panoptic quality PQ / SQ / RQ with the COCO panoptic definition (panopticapi ``pq_compute``; maskclippp.md §9.1).

Per image (all tensor ops on the segment-pair intersection matrix, no loop over pixels or segments):

* areas and intersections from one ``bincount`` of paired compact segment indices;
* GT void = pixels of id 0, of ids not listed in ``gt_segments``, or of segments whose category is outside
  ``0..K-1``; ``union = pred_area + gt_area - intersection - void_overlap(pred)``;
* a GT segment and a prediction of the same category match when IoU > 0.5 (unique by construction); crowd GT
  segments are never matched and never false negatives;
* an unmatched prediction is a false positive unless more than half of its area lies on void or on crowd
  segments of its own category.

State: per-class ``tp``, ``fp``, ``fn`` (int64) and ``iou_sum`` (float64), summed across processes. PQ / SQ / RQ are
averaged over the classes with ``tp + fp + fn > 0`` (all, things, stuff), in percent; per-class PQ / SQ / RQ are
reported like panopticapi (0 for a class with no TP, FP and FN, which is left out of the averages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric


class PanopticQuality(Metric):
    """PQ, SQ, RQ for all classes, things and stuff, plus per-class PQ, SQ and RQ.

    Args:
        num_classes: K (contiguous category ids ``0..K-1``).
        is_thing: thing flag per class (``bool [K]`` or list).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    tp: torch.Tensor
    fp: torch.Tensor
    fn: torch.Tensor
    iou_sum: torch.Tensor

    def __init__(self, num_classes: int, is_thing: Sequence[bool] | torch.Tensor) -> None:
        super().__init__()
        is_thing = torch.as_tensor(is_thing, dtype=torch.bool)
        if is_thing.shape != (num_classes,):
            raise ValueError(f"is_thing must have {num_classes} entries, got {tuple(is_thing.shape)}.")
        self.num_classes = num_classes
        self.is_thing = is_thing
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        pred_pan: torch.Tensor,
        pred_segments: Sequence[dict[str, Any]],
        gt_pan: torch.Tensor,
        gt_segments: Sequence[dict[str, Any]],
    ) -> None:
        """Add one image.

        Args:
            pred_pan: ``int64 [H, W]`` predicted segment ids, 0 = no prediction.
            pred_segments: ``{"id", "category_id"}`` per predicted segment; every non-zero id of ``pred_pan`` must be
                listed and every listed id must appear (as panopticapi checks).
            gt_pan: ``int64 [H, W]`` ground-truth segment ids, 0 = void.
            gt_segments: ``{"id", "category_id", "iscrowd"}`` per GT segment (a dataset's ``segments_info``).
        """
        if pred_pan.shape != gt_pan.shape:
            raise ValueError(f"pred_pan {tuple(pred_pan.shape)} and gt_pan {tuple(gt_pan.shape)} differ in shape.")
        device = self.tp.device
        k = self.num_classes
        pred_pan, gt_pan = pred_pan.to(device).long().flatten(), gt_pan.to(device).long().flatten()

        # Compact indices: 0 = void / unlisted, i + 1 = i-th listed segment.
        pred_ids = torch.tensor([int(s["id"]) for s in pred_segments], dtype=torch.int64, device=device)
        pred_cat = torch.tensor([int(s["category_id"]) for s in pred_segments], dtype=torch.int64, device=device)
        if bool(((pred_cat < 0) | (pred_cat >= k)).any()):
            raise ValueError(f"Predicted categories {pred_cat.tolist()} must lie in 0..{k - 1}.")
        if bool((pred_ids == 0).any()) or len(torch.unique(pred_ids)) != len(pred_ids):
            raise ValueError("Predicted segment ids must be distinct and non-zero (0 means no prediction).")
        pred_index = _compact(pred_pan, pred_ids)  # [HW]
        unlisted = (pred_index == 0) & (pred_pan != 0)
        if bool(unlisted.any()):
            raise ValueError(f"Predicted ids {torch.unique(pred_pan[unlisted]).tolist()} are not in pred_segments.")

        gt_ids = torch.tensor([int(s["id"]) for s in gt_segments], dtype=torch.int64, device=device)
        gt_cat = torch.tensor([int(s["category_id"]) for s in gt_segments], dtype=torch.int64, device=device)
        gt_crowd = torch.tensor([bool(s.get("iscrowd", 0)) for s in gt_segments], dtype=torch.bool, device=device)
        gt_known = (gt_cat >= 0) & (gt_cat < k)
        gt_ids, gt_cat, gt_crowd = gt_ids[gt_known], gt_cat[gt_known], gt_crowd[gt_known]
        gt_index = _compact(gt_pan, gt_ids)  # [HW]

        n_gt, n_pred = len(gt_ids) + 1, len(pred_ids) + 1
        inter = torch.bincount(gt_index * n_pred + pred_index, minlength=n_gt * n_pred).reshape(n_gt, n_pred)
        pred_area = inter.sum(dim=0)[1:]  # [P]
        gt_area = inter.sum(dim=1)[1:]  # [G]
        if bool((pred_area == 0).any()):
            missing = pred_ids[pred_area == 0].tolist()
            raise ValueError(f"Predicted segments {missing} are listed in pred_segments but have no pixel.")
        void_overlap = inter[0, 1:]  # [P]
        pair = inter[1:, 1:].double()  # [G, P]
        union = pred_area[None] + gt_area[:, None] - pair - void_overlap[None]  # [G, P]
        iou = pair / union.clamp_min(1)
        same_class = gt_cat[:, None] == pred_cat[None]
        matched = (iou > 0.5) & same_class & ~gt_crowd[:, None]  # [G, P], at most one True per row and column
        gt_matched, pred_matched = matched.any(dim=1), matched.any(dim=0)

        self.tp += torch.bincount(gt_cat[gt_matched], minlength=k)
        self.iou_sum += torch.bincount(gt_cat, weights=(iou * matched).sum(dim=1), minlength=k)
        self.fn += torch.bincount(gt_cat[~gt_matched & ~gt_crowd], minlength=k)
        crowd_same_class = (gt_crowd[:, None] & same_class).double()  # [G, P]
        ignored = void_overlap.double() + (pair * crowd_same_class).sum(dim=0)  # [P]
        false_positive = ~pred_matched & (ignored / pred_area.double() <= 0.5)
        self.fp += torch.bincount(pred_cat[false_positive], minlength=k)

    def compute(self) -> dict[str, torch.Tensor]:
        """``PQ``, ``SQ``, ``RQ`` and their ``_th`` / ``_st`` variants (percent), the number of classes averaged
        ``n`` / ``n_th`` / ``n_st``, and ``PQ_per_class`` / ``SQ_per_class`` / ``RQ_per_class`` ``[K]``.

        Per class as panopticapi ``PQStat.pq_average``: ``PQ = iou_sum / (tp + fp/2 + fn/2)``, ``SQ = iou_sum / tp``
        (0 without TP), ``RQ = tp / (tp + fp/2 + fn/2)``; a class with no TP, FP and FN gets 0 for all three and is
        left out of the averages (``n`` counts the others; an average over no class is NaN).
        """
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        denominator = tp + 0.5 * fp + 0.5 * fn
        present = (tp + fp + fn) > 0
        zero = torch.zeros_like(tp)
        pq = torch.where(present, self.iou_sum / denominator.clamp_min(1e-12), zero)
        sq = torch.where(tp > 0, self.iou_sum / tp.clamp_min(1), zero)
        rq = torch.where(present, tp / denominator.clamp_min(1e-12), zero)
        is_thing = self.is_thing.to(tp.device)
        result: dict[str, torch.Tensor] = {}
        for suffix, subset in (("", torch.ones_like(is_thing)), ("_th", is_thing), ("_st", ~is_thing)):
            chosen = subset & present
            count = int(chosen.sum())
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                result[f"{name}{suffix}"] = 100 * values[chosen].mean() if count else torch.tensor(torch.nan)
            result[f"n{suffix}"] = torch.tensor(count)
        result["PQ_per_class"], result["SQ_per_class"], result["RQ_per_class"] = 100 * pq, 100 * sq, 100 * rq
        return result


def _compact(ids: torch.Tensor, listed: torch.Tensor) -> torch.Tensor:
    """Map each id to 1 + its position in ``listed`` (0 if absent): ``int64 [N]``."""
    if listed.numel() == 0:
        return torch.zeros_like(ids)
    order = torch.argsort(listed)
    sorted_ids = listed[order]
    position = torch.searchsorted(sorted_ids, ids).clamp_(max=len(sorted_ids) - 1)
    found = sorted_ids[position] == ids
    return torch.where(found, order[position] + 1, torch.zeros_like(ids))

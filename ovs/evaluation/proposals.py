"""Class-agnostic quality of mask proposals (issue 13 item 5, the toy generator's model card): how well a set of
proposals covers the ground-truth segments, whatever their class.

:class:`ProposalRecall` keeps, for every ground-truth segment, the IoU of its best-overlapping proposal (``proposal
>= 0.5`` binarised, as Mask2Former's post-processing) and reports the recall at IoU thresholds (the fraction of
segments some proposal matches, COCO "AR"-style without the per-image proposal limit) and the average best overlap
(ABO, Pont-Tuset et al. 2017 §4) per group of segments (e.g. things seen / things unseen / stuff).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def best_proposals(proposals: Tensor, segments: Tensor) -> tuple[Tensor, Tensor]:
    """Best proposal of each segment: its IoU ``float64 [G]`` (0 without proposals) and index ``int64 [G]``.

    Args:
        proposals: ``bool [Q, H, W]`` binary proposal masks.
        segments: ``bool [G, H, W]`` ground-truth segments (void pixels already excluded from both by the caller
            when a dataset has them).
    """
    if segments.shape[0] == 0 or proposals.shape[0] == 0:
        zeros = torch.zeros(segments.shape[0], dtype=torch.float64, device=segments.device)
        return zeros, zeros.long()
    p = proposals.flatten(1).double()  # [Q, HW]
    g = segments.flatten(1).double()  # [G, HW]
    inter = g @ p.T  # [G, Q]
    union = g.sum(dim=1, keepdim=True) + p.sum(dim=1)[None] - inter
    best = (inter / union.clamp_min(1)).max(dim=1)
    return best.values, best.indices


def best_proposal_iou(proposals: Tensor, segments: Tensor) -> Tensor:
    """IoU of each segment with its best proposal: ``float64 [G]`` (:func:`best_proposals`)."""
    return best_proposals(proposals, segments)[0]


class ProposalRecall(Metric):
    """Recall at IoU thresholds and ABO of class-agnostic proposals, overall and per segment group.

    Args:
        groups: names of the segment groups (``update`` gives each segment's group index); results
            ``recall@<t>_<group>`` / ``abo_<group>`` besides the overall ``recall@<t>`` / ``abo`` (percent).
        thresholds: IoU thresholds of the recall (0.5 and 0.75).
    """

    full_state_update = False

    def __init__(self, groups: Sequence[str] = (), thresholds: Sequence[float] = (0.5, 0.75)) -> None:
        super().__init__()
        self.groups, self.thresholds = list(groups), [float(t) for t in thresholds]
        n = max(len(self.groups), 1)
        self.add_state("count", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(len(self.thresholds), n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, proposals: Tensor, segments: Tensor, group: Tensor | None = None) -> None:
        """Add one image: ``proposals`` ``float [Q, H, W]`` probabilities (binarised at 0.5) or ``bool``,
        ``segments`` ``bool [G, H, W]``, ``group`` ``int64 [G]`` (index into ``groups``; all 0 when ``None``)."""
        if proposals.shape[-2:] != segments.shape[-2:]:
            raise ValueError(f"proposals {tuple(proposals.shape)} and segments {tuple(segments.shape)} differ in size.")
        binary = proposals if proposals.dtype == torch.bool else proposals >= 0.5
        best = best_proposal_iou(binary.to(self.count.device), segments.to(self.count.device))  # [G]
        index = torch.zeros_like(best, dtype=torch.int64) if group is None else group.to(self.count.device).long()
        n = self.count.numel()
        self.count += torch.bincount(index, minlength=n).double()
        self.iou_sum += torch.bincount(index, weights=best, minlength=n)
        for row, threshold in enumerate(self.thresholds):
            self.hits[row] += torch.bincount(index, weights=(best >= threshold).double(), minlength=n)

    def compute(self) -> dict[str, Tensor]:
        """Percentages; groups with no segment are NaN; ``segments`` and ``segments_<group>`` are the counts."""
        result: dict[str, Tensor] = {}
        subsets = [("", torch.ones_like(self.count, dtype=torch.bool))]
        subsets += [(f"_{name}", torch.arange(self.count.numel(), device=self.count.device) == i)
                    for i, name in enumerate(self.groups)]
        for suffix, chosen in subsets:
            count = self.count[chosen].sum()
            result[f"segments{suffix}"] = count
            result[f"abo{suffix}"] = 100 * self.iou_sum[chosen].sum() / count if count else torch.tensor(torch.nan)
            for row, threshold in enumerate(self.thresholds):
                hits = self.hits[row][chosen].sum()
                result[f"recall@{threshold:g}{suffix}"] = 100 * hits / count if count else torch.tensor(torch.nan)
        return result

"""Referring-expression retrieval metrics (MaskInversion paper §4.1 (a); maskinversion spec §4 (a)).

For each expression the candidate masks of its image are ranked by the cosine similarity of their embeddings with
the expression's text embedding. ``Acc@k``: the ground-truth mask is among the k best (PhraseCut top-1/5/10).
``mIoU`` / ``oIoU`` (RefCOCO / RefCOCO+, following ReCLIP, FGVP, Global-Local CLIP's ``Compute_IoU``): the IoU of the
selected (top-1) mask with the ground-truth mask, averaged over expressions (``mIoU``, ``U = 0`` counts as IoU 0), or
as total intersection over total union (``oIoU``). All values in percent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class ReferringRetrieval(Metric):
    """Acc@k, mIoU and oIoU of text-to-mask retrieval.

    Args:
        ks: the k of Acc@k (a k above the number of candidates counts every expression as a hit).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    hits: Tensor
    count: Tensor
    iou_sum: Tensor
    inter_sum: Tensor
    union_sum: Tensor

    def __init__(self, ks: Sequence[int] = (1, 5, 10)) -> None:
        super().__init__()
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks!r}.")
        self.ks = tuple(int(k) for k in ks)
        self.add_state("hits", torch.zeros(len(self.ks), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("inter_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, target: Tensor, candidates: Tensor, gt_masks: Tensor) -> None:
        """One image's expressions.

        Args:
            scores: ``[E, M]`` similarity of each expression with each candidate mask.
            target: ``int64 [E]`` index of the ground-truth candidate of each expression.
            candidates: ``bool [M, H, W]`` candidate masks.
            gt_masks: ``bool [E, H, W]`` ground-truth mask of each expression (IoU reference).
        """
        e, m = scores.shape
        if target.shape != (e,) or candidates.shape[0] != m or gt_masks.shape[0] != e:
            raise ValueError(
                f"Inconsistent shapes: scores {tuple(scores.shape)}, target {tuple(target.shape)}, candidates "
                f"{tuple(candidates.shape)}, gt_masks {tuple(gt_masks.shape)}."
            )
        if e == 0:
            return
        target = target.to(scores.device).long()
        true_score = scores.gather(1, target[:, None])  # [E, 1]
        rank = (scores > true_score).sum(dim=1)  # [E], ties favour the ground truth
        ks = torch.tensor(self.ks, device=rank.device)
        self.hits += (rank[None] < ks[:, None]).sum(dim=1).to(self.hits.device)
        self.count += e
        chosen = candidates[scores.argmax(dim=1)].to(gt_masks.device).bool()  # [E, H, W]
        gt = gt_masks.bool()
        inter = (chosen & gt).flatten(1).sum(dim=1).double()  # [E]
        union = (chosen | gt).flatten(1).sum(dim=1).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        self.iou_sum += iou.sum().to(self.iou_sum.device)
        self.inter_sum += inter.sum().to(self.inter_sum.device)
        self.union_sum += union.sum().to(self.union_sum.device)

    def compute(self) -> dict[str, Tensor]:
        """``Acc@k`` for each k, ``mIoU`` and ``oIoU`` in percent (NaN before any update)."""
        count = self.count.double()
        result = {f"Acc@{k}": 100 * self.hits[i].double() / count for i, k in enumerate(self.ks)}
        result["mIoU"] = 100 * self.iou_sum / count
        result["oIoU"] = 100 * self.inter_sum / self.union_sum
        return result

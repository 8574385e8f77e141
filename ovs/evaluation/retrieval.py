"""Region classification accuracy Acc@k (MaskInversion class retrieval, maskinversion.md §"(b) Class retrieval").

Each query region (a mask) is classified against all dataset classes; Acc@k is the percentage of regions whose true
class is among the k highest scores. ``mAcc@1`` is the class-balanced (mean per-class) Acc@1, the spec's [design]
extra column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class RegionAccuracy(Metric):
    """Acc@k for ``ks`` (default 1, 5, 10) and class-balanced ``mAcc@1``, in percent.

    Args:
        num_classes: K; ``k`` larger than K is clamped to K (every class is then within the top k).
        ks: the k values.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    correct: torch.Tensor
    total: torch.Tensor
    class_correct: torch.Tensor
    class_total: torch.Tensor

    def __init__(self, num_classes: int, ks: Sequence[int] = (1, 5, 10)) -> None:
        super().__init__()
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks!r}.")
        self.num_classes = num_classes
        self.ks = tuple(int(k) for k in ks)
        self.add_state("correct", torch.zeros(len(self.ks), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("class_correct", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("class_total", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """Add regions: ``scores`` ``float [N, K]`` (any monotone score, e.g. cosine), ``target`` ``int64 [N]``."""
        if scores.ndim != 2 or scores.shape[1] != self.num_classes or target.shape != scores.shape[:1]:
            raise ValueError(
                f"Expected scores [N, {self.num_classes}] and target [N], got {tuple(scores.shape)} and "
                f"{tuple(target.shape)}."
            )
        target = target.to(scores.device).long()
        if bool(((target < 0) | (target >= self.num_classes)).any()):
            raise ValueError(f"Targets must lie in 0..{self.num_classes - 1}.")
        # rank of the true class = number of classes scoring strictly higher (ties favour the true class)
        true_score = scores.gather(1, target[:, None])  # [N, 1]
        rank = (scores > true_score).sum(dim=1)  # [N]
        ks = torch.tensor(self.ks, device=rank.device).clamp(max=self.num_classes)
        self.correct += (rank[None] < ks[:, None]).sum(dim=1).to(self.correct.device)
        self.total += target.numel()
        self.class_total += torch.bincount(target, minlength=self.num_classes).to(self.class_total.device)
        self.class_correct += torch.bincount(target[rank == 0], minlength=self.num_classes).to(
            self.class_correct.device
        )

    def compute(self) -> dict[str, torch.Tensor]:
        """``Acc@k`` for each k and ``mAcc@1`` over classes with at least one region (percent)."""
        total = self.total.double()
        result = {f"Acc@{k}": 100 * self.correct[i].double() / total for i, k in enumerate(self.ks)}
        present = self.class_total > 0
        per_class = self.class_correct[present].double() / self.class_total[present].double()
        result["mAcc@1"] = 100 * per_class.mean() if bool(present.any()) else torch.tensor(float("nan"))
        return result

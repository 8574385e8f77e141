"""Class-agnostic proposal recall (ovs.evaluation.proposals) on hand-built masks with known overlaps."""

from __future__ import annotations

import math

import pytest
import torch

from ovs.evaluation.proposals import ProposalRecall, best_proposal_iou


def box(top: int, left: int, height: int, width: int, size: int = 10) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_best_proposal_iou_by_hand() -> None:
    segments = torch.stack([box(0, 0, 4, 4), box(5, 5, 4, 4), box(0, 6, 2, 2)])  # areas 16, 16, 4
    proposals = torch.stack([
        box(0, 0, 4, 2),  # segment 0: 8 / 16 = 0.5
        box(0, 0, 4, 5),  # segment 0: 16 / 20 = 0.8 (its best)
        box(5, 5, 2, 4),  # segment 1: 8 / 16 = 0.5
    ])
    best = best_proposal_iou(proposals, segments)
    assert best.tolist() == pytest.approx([0.8, 0.5, 0.0])
    assert best_proposal_iou(proposals[:0], segments).tolist() == [0.0, 0.0, 0.0]


def test_recall_and_abo_per_group() -> None:
    metric = ProposalRecall(["things", "stuff"], thresholds=(0.5, 0.75))
    segments = torch.stack([box(0, 0, 4, 4), box(5, 5, 4, 4), box(0, 6, 2, 2)])
    soft = torch.stack([box(0, 0, 4, 5), box(5, 5, 2, 4)]).float() * 0.9 + 0.05  # probabilities: 0.95 / 0.05
    metric.update(soft, segments, torch.tensor([0, 0, 1]))
    metric.update(box(0, 0, 10, 10)[None].float(), box(0, 0, 10, 10)[None], torch.tensor([1]))  # a perfect stuff hit
    result = metric.compute()
    # IoUs: things 0.8, 0.5; stuff 0.0, 1.0.
    assert result["segments"] == 4 and result["segments_things"] == 2 and result["segments_stuff"] == 2
    assert float(result["recall@0.5"]) == pytest.approx(75.0)
    assert float(result["recall@0.75"]) == pytest.approx(50.0)
    assert float(result["recall@0.5_things"]) == pytest.approx(100.0)
    assert float(result["recall@0.75_things"]) == pytest.approx(50.0)
    assert float(result["recall@0.5_stuff"]) == pytest.approx(50.0)
    assert float(result["abo"]) == pytest.approx(100 * (0.8 + 0.5 + 0.0 + 1.0) / 4)
    assert float(result["abo_things"]) == pytest.approx(65.0)


def test_empty_group_is_nan_and_sizes_must_match() -> None:
    metric = ProposalRecall(["a", "b"])
    metric.update(box(0, 0, 2, 2)[None], box(0, 0, 2, 2)[None], torch.tensor([0]))
    assert math.isnan(float(metric.compute()["recall@0.5_b"]))
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(torch.zeros(1, 5, 5), box(0, 0, 2, 2)[None])

"""Semantic / panoptic / instance post-processing on constructed scores and masks (maskclippp.md §8.5)."""

from __future__ import annotations

import math

import torch

from ovs.methods.maskclippp.postprocess import instance_inference, panoptic_inference, semantic_inference


def log(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[math.log(v) for v in row] for row in rows])


def test_semantic_sums_class_probabilities_times_masks_and_drops_void() -> None:
    scores = log([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])  # void last
    masks = torch.tensor([[[1.0, 0.5, 0.0]], [[0.0, 0.5, 1.0]]])  # [Q=2, H=1, W=3]
    sem = semantic_inference(scores, masks, num_classes=2)
    expected = torch.tensor([[[0.7, 0.35 + 0.05, 0.1]], [[0.2, 0.1 + 0.3, 0.6]]])
    torch.testing.assert_close(sem, expected)


def test_semantic_without_void_column() -> None:
    scores = torch.tensor([[0.0, math.log(3.0)]])  # softmax [0.25, 0.75]
    sem = semantic_inference(scores, torch.tensor([[[0.4, 1.0]]]), num_classes=2)
    torch.testing.assert_close(sem, torch.tensor([[[0.1, 0.25]], [[0.3, 0.75]]]))


def panoptic_case() -> tuple[torch.Tensor, torch.Tensor]:
    """2 x 4 image; classes 0 (thing), 1 (stuff), 2 (thing) + void; masks given per pixel."""
    rows = [
        [0.9, 0.05, 0.03, 0.02],  # q0: thing 0, score 0.9
        [0.1, 0.8, 0.05, 0.05],  # q1: stuff 1, 0.8
        [0.1, 0.7, 0.1, 0.1],  # q2: stuff 1, 0.7 -> merged into q1's segment
        [0.2, 0.1, 0.6, 0.1],  # q3: thing 2, 0.6
        [0.1, 0.1, 0.1, 0.7],  # q4: void -> dropped
        [0.85, 0.05, 0.05, 0.05],  # q5: thing 0, 0.85 -> rejected by the overlap threshold
        [0.2, 0.58, 0.1, 0.12],  # q6: stuff 1, 0.58 <= object threshold 0.59 -> dropped (else it wins row 1, c2-3)
    ]
    masks = torch.zeros(7, 2, 4)
    masks[0, :, 0] = 0.9
    masks[1, :, 1] = 0.9
    masks[2, 0, 2] = 0.9
    masks[3, 1, 2:] = 0.9
    masks[4] = 1.0
    masks[5, 0, 3], masks[5, 1, 3] = 0.95, 0.55  # wins (0, 3) with 0.8075; loses (1, 3): 0.4675 < 0.54
    masks[6, 1, 2:] = 1.0
    return log(rows), masks


def test_panoptic_thresholds_overlap_rejection_and_stuff_merging() -> None:
    scores, masks = panoptic_case()
    result = panoptic_inference(scores, masks, torch.tensor([True, False, True]), 0.59, 0.8)
    # q5 owns only 1 of its 2 pixels >= 0.5 (0.5 < 0.8): rejected and its pixel (0, 3) stays 0.
    expected = torch.tensor([[1, 2, 2, 0], [1, 2, 3, 3]])
    assert torch.equal(result.pan_seg, expected)
    assert result.segments_info == [
        {"id": 1, "category_id": 0, "isthing": True},
        {"id": 2, "category_id": 1, "isthing": False},
        {"id": 3, "category_id": 2, "isthing": True},
    ]


def test_panoptic_things_of_one_class_stay_separate_and_lower_overlap_keeps_q5() -> None:
    scores, masks = panoptic_case()
    result = panoptic_inference(scores, masks, torch.tensor([True, False, True]), 0.59, 0.5)
    # with overlap 0.5, q5 (1 / 2 >= 0.5) becomes thing segment 4 of class 0, separate from segment 1
    assert torch.equal(result.pan_seg, torch.tensor([[1, 2, 2, 4], [1, 2, 3, 3]]))
    assert [(s["id"], s["category_id"]) for s in result.segments_info] == [(1, 0), (2, 1), (3, 2), (4, 0)]


def test_panoptic_with_nothing_kept_is_empty() -> None:
    scores, masks = panoptic_case()
    result = panoptic_inference(scores, masks, torch.tensor([True, False, True]), 0.95, 0.8)
    assert result.segments_info == [] and not bool(result.pan_seg.any())


def test_instance_topk_over_queries_and_classes_with_mask_score() -> None:
    scores = log([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    masks = torch.tensor([[[0.9, 0.7, 0.2, 0.0]], [[0.4, 0.6, 0.8, 1.0]]])
    result = instance_inference(scores, masks, num_classes=2, detections_per_image=3)
    # top-3 of [0.6, 0.3, 0.2, 0.7]: (q1, c1) 0.7, (q0, c0) 0.6, (q0, c1) 0.3; mask scores 1.6 / 2 and 2.4 / 3
    assert result.labels.tolist() == [1, 0, 1]
    torch.testing.assert_close(result.scores, torch.tensor([0.7 * 0.8, 0.6 * 0.8, 0.3 * 0.8]))
    assert result.masks.tolist() == [[[False, True, True, True]], [[True, True, False, False]],
                                     [[True, True, False, False]]]


def test_instance_keeps_thing_classes_when_panoptic_is_on() -> None:
    scores = log([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    masks = torch.tensor([[[0.9, 0.7, 0.2, 0.0]], [[0.4, 0.6, 0.8, 1.0]]])
    result = instance_inference(scores, masks, 2, 3, thing_classes=torch.tensor([False, True]))
    assert result.labels.tolist() == [1, 1]
    torch.testing.assert_close(result.scores, torch.tensor([0.7 * 0.8, 0.3 * 0.8]))

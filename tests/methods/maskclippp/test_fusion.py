"""γ-fusion, train -> test look-up table and void weighting on constructed probabilities (maskclippp.md §8.3-8.4).

Expected values are written out by hand from the spec's formulas (numbers in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from ovs.methods.maskclippp.fusion import (
    fuse_scores,
    geometric_fusion,
    map_logits_to_test,
    train_to_test_lut,
    void_weighting,
)

P_CLIP = [0.5, 0.3, 0.2]
P_GEN = [0.2, 0.2, 0.6]  # generator probabilities over the 3 test classes once void is removed
VOID = 1 / 3  # un-normalised void weight: p_void = (1/3) / (1 + 1/3) = 0.25


def clip_logits() -> torch.Tensor:
    return torch.tensor([[math.log(p) + 1.7 for p in P_CLIP]])  # any constant shift: same softmax


def generator_logits() -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in [*P_GEN, VOID]]])  # [1, K + 1]


def test_geometric_fusion_on_seen_classes_only() -> None:
    seen = torch.tensor([True, False, True])
    fused = geometric_fusion(clip_logits(), generator_logits()[:, :3], seen, gamma=0.5)
    # seen: sqrt(p_gen * p_clip); unseen: p_clip alone (β = 1)
    expected = [math.sqrt(0.2 * 0.5), 0.3, math.sqrt(0.6 * 0.2)]  # 0.31623, 0.3, 0.34641
    torch.testing.assert_close(fused, torch.tensor([[math.log(v + 1e-8) for v in expected]]))


def test_gamma_is_the_exponent_on_the_generator() -> None:
    seen = torch.tensor([True, True, True])
    fused = geometric_fusion(clip_logits(), generator_logits()[:, :3], seen, gamma=0.1).exp()
    expected = [0.2**0.1 * 0.5**0.9, 0.2**0.1 * 0.3**0.9, 0.6**0.1 * 0.2**0.9]
    torch.testing.assert_close(fused, torch.tensor([expected]), atol=1e-7, rtol=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        geometric_fusion(clip_logits(), generator_logits()[:, :3], seen, gamma=1.5)


def test_void_weighting() -> None:
    scores = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]])
    out = void_weighting(scores, generator_logits())  # p_void = 0.25
    expected = [0.5 * 0.75, 0.3 * 0.75, 0.2 * 0.75, 0.25]
    torch.testing.assert_close(out, torch.tensor([[math.log(v + 1e-8) for v in expected]]))


def test_fuse_scores_open_vocabulary_with_fusion_and_void() -> None:
    out = fuse_scores(clip_logits(), generator_logits(), torch.tensor([True, False, True]), gamma=0.5)
    fused = [math.sqrt(0.1) + 1e-8, 0.3 + 1e-8, math.sqrt(0.12) + 1e-8]
    total = sum(fused)  # 0.96264
    expected = [f / total * 0.75 for f in fused] + [0.25]
    torch.testing.assert_close(out, torch.tensor([[math.log(v + 1e-8) for v in expected]]))


def test_fuse_scores_without_fusion_uses_maskclippp_then_void() -> None:
    out = fuse_scores(clip_logits(), generator_logits(), torch.tensor([True, True, True]), gamma=0.0)
    expected = [0.5 * 0.75, 0.3 * 0.75, 0.2 * 0.75, 0.25]
    torch.testing.assert_close(out, torch.tensor([[math.log(v + 1e-8) for v in expected]]))


def test_fuse_scores_without_generator_logits_is_the_maskclippp_logits() -> None:
    logits = clip_logits()
    assert torch.equal(fuse_scores(logits, None, torch.tensor([True, True, True]), gamma=0.4), logits)


TRAIN = [["person", "man"], ["car"], ["sky"], ["automobile"]]
TEST = [["man", "person"], ["tree"], ["Automobile", "car"], ["person"]]


def test_lut_first_sharing_test_class_unmatched_and_void_to_extra_slot() -> None:
    # person -> test 0 (first of 0 and 3); car -> 2; sky -> none (4); void -> 4; automobile: the reference's string
    # equality does not match "Automobile" (4), the normalised option does (2)
    assert train_to_test_lut(TRAIN, TEST).tolist() == [0, 2, 4, 4, 4]
    assert train_to_test_lut(TRAIN, TEST, match="normalized").tolist() == [0, 2, 4, 2, 4]
    with pytest.raises(ValueError, match="match must be one of"):
        train_to_test_lut(TRAIN, TEST, match="fuzzy")


def test_lut_scatter_mean_and_unmatched_test_classes_get_zero() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    mapped = map_logits_to_test(logits, train_to_test_lut(TRAIN, TEST, match="normalized"), num_test=4)
    # test 0 = person (1); tree: no train class (0); test 2 = mean(car 2, automobile 4) = 3; test 3: not first (0)
    torch.testing.assert_close(mapped, torch.tensor([[1.0, 0.0, 3.0, 0.0]]))


def test_fuse_scores_closed_vocabulary() -> None:
    clip = torch.zeros(1, 4)  # p_clip uniform 0.25
    gen = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    seen = torch.tensor([True, False, True, True])
    out = fuse_scores(clip, gen, seen, gamma=0.5, lut=train_to_test_lut(TRAIN, TEST, match="normalized"))
    mapped = [1.0, 0.0, 3.0, 0.0]
    z = sum(math.exp(v) for v in mapped)
    p_gen = [math.exp(v) / z for v in mapped]
    fused = [math.sqrt(p_gen[0] * 0.25) + 1e-8, 0.25 + 1e-8, math.sqrt(p_gen[2] * 0.25) + 1e-8,
             math.sqrt(p_gen[3] * 0.25) + 1e-8]
    p_void = math.exp(5.0) / sum(math.exp(v) for v in [1.0, 2.0, 3.0, 4.0, 5.0])  # void = last train column
    expected = [f / sum(fused) * (1 - p_void) for f in fused] + [p_void]
    torch.testing.assert_close(out, torch.tensor([[math.log(v + 1e-8) for v in expected]]))

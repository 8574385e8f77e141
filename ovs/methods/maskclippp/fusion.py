"""Class scores of generated masks: train -> test look-up table, γ-fusion and void handling (maskclippp.md §8.3,
§8.4; paper eq. 4).

All functions take per-image score matrices ``[Q, ·]`` and are pure tensor ops. The result of
:func:`fuse_scores` is what the post-processing (``postprocess``) takes a softmax over: ``[Q, K + 1]`` log-scores
with void last when the generator gives logits, else the MaskCLIP++ logits ``[Q, K]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ovs.data.class_names import vocabulary_key

EPS = 1e-8
"""Added inside the logarithms, as the reference."""


def train_to_test_lut(train_names: Sequence[Sequence[str]], test_names: Sequence[Sequence[str]],
                      match: str = "exact") -> Tensor:
    """``int64 [K_train + 1]``: test class of each generator class, ``K_test`` (the extra slot) when none; void
    (the last entry) always goes to the extra slot.

    Each train class goes to the **first** test class sharing a synonym with it (spec §8.3; ``match``: string
    equality as the reference, or ``"normalized"``, see :data:`ovs.data.class_names.VOCABULARY_MATCHES`).
    """
    first: dict[str, int] = {}
    for index, names in enumerate(test_names):
        for name in names:
            first.setdefault(vocabulary_key(name, match), index)
    extra = len(test_names)
    lut = []
    for names in train_names:
        matches = [first[vocabulary_key(n, match)] for n in names if vocabulary_key(n, match) in first]
        lut.append(min(matches) if matches else extra)
    return torch.tensor([*lut, extra], dtype=torch.int64)


def map_logits_to_test(logits: Tensor, lut: Tensor, num_test: int) -> Tensor:
    """Closed-vocabulary generator logits ``[Q, K_train + 1]`` -> ``[Q, K_test]`` (spec §8.3).

    Logits mapped to the same test class are averaged (scatter mean); test classes without a train class get 0; the
    extra slot (unmatched train classes and void) is dropped.
    """
    q = logits.shape[0]
    index = lut.to(logits.device).expand(q, -1)  # [Q, K_train + 1]
    total = logits.new_zeros(q, num_test + 1).scatter_add_(1, index, logits)
    count = logits.new_zeros(q, num_test + 1).scatter_add_(1, index, torch.ones_like(logits))
    return (total / count.clamp_min(1))[:, :num_test]


def geometric_fusion(clip_logits: Tensor, generator_logits: Tensor, seen: Tensor, gamma: float) -> Tensor:
    """Paper eq. 4 as coded: ``log(p_gen^γ · p_clip^(1-γ) + 1e-8)`` on seen classes, ``log(p_clip + 1e-8)`` on the
    others (code α = 1 − γ, β = 1).

    Args:
        clip_logits: MaskCLIP++ logits ``[Q, K]``.
        generator_logits: generator logits over the same K test classes, void removed, ``[Q, K]``.
        seen: ``bool [K]``, classes of the generator's training vocabulary.
        gamma: the paper's γ in [0, 1] (0.1 EVA-L, 0.4 ConvNeXt-B).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}.")
    p_clip = clip_logits.float().softmax(dim=-1)  # [Q, K]
    p_gen = generator_logits.float().softmax(dim=-1)  # [Q, K]
    fused = p_gen.pow(gamma) * p_clip.pow(1.0 - gamma)
    return torch.log(torch.where(seen.to(p_clip.device), fused, p_clip) + EPS)


def void_weighting(scores: Tensor, generator_logits: Tensor) -> Tensor:
    """``log([softmax(scores) · (1 − p_void), p_void] + 1e-8)``: ``[Q, K + 1]`` with void last (spec §8.4).

    Args:
        scores: fused or MaskCLIP++ scores ``[Q, K]``.
        generator_logits: the generator's own logits ``[Q, K_gen + 1]`` (void last); p_void is its softmax's last
            column.
    """
    p_void = generator_logits.float().softmax(dim=-1)[:, -1:]  # [Q, 1]
    p = scores.float().softmax(dim=-1)  # [Q, K]
    return torch.log(torch.cat([p * (1.0 - p_void), p_void], dim=-1) + EPS)


def fuse_scores(
    clip_logits: Tensor,
    generator_logits: Tensor | None,
    seen: Tensor,
    gamma: float,
    lut: Tensor | None = None,
) -> Tensor:
    """Final per-mask class scores (spec §8.3-8.4).

    Args:
        clip_logits: MaskCLIP++ logits ``[Q, K]`` (max over synonyms).
        generator_logits: ``[Q, K_gen + 1]`` with void last (over the test classes for open-vocabulary generators,
            K_gen = K), or ``None`` (ground-truth / logit-free masks: the MaskCLIP++ logits are returned).
        seen: ``bool [K]`` generator-seen test classes.
        gamma: paper γ; 0 turns the ensemble off (MaskCLIP++ logits as they are, the panoptic / instance protocol).
        lut: :func:`train_to_test_lut` for closed-vocabulary generators, ``None`` when the columns are the test
            classes.

    Returns:
        ``[Q, K + 1]`` log-scores with void last, or ``[Q, K]`` without generator logits.
    """
    if generator_logits is None:
        return clip_logits.float()
    k = clip_logits.shape[1]
    if lut is None:
        if generator_logits.shape[1] != k + 1:
            raise ValueError(f"Generator logits have {generator_logits.shape[1]} columns for {k} test classes + void.")
        test_logits = generator_logits[:, :k]
    else:
        test_logits = map_logits_to_test(generator_logits.float(), lut, k)
    scores = geometric_fusion(clip_logits, test_logits, seen, gamma) if gamma > 0 else clip_logits.float()
    return void_weighting(scores, generator_logits)

"""Per-image post-processing of per-name logits into class scores and a label map (training-free spec §2.4, §3.4,
§7).

SCLIP / NACLIP / ClearCLIP (spec §2.4): ``p = softmax(logit_scale * logits)`` over all names; class probability =
max over the class's names; optional area threshold; argmax; pixels whose top probability is below ``prob_thd``
become background. NACLIP (spec §7) renormalises the probabilities to sum 1, but its released ``postprocess_result``
takes the label and applies ``prob_thd`` *before* renormalising: that is the default (``threshold_order``); the
threshold on the renormalised probabilities is an option. GEM (spec §3.3-3.4): the argmax runs on per-name min-max
normalised cosine maps and, on VOC, background is where ``softmax(100 * cos)`` of the foreground names stays below
0.85. All of it is tensor code over ``[K, H, W]``; no ``[K, K_names, H, W]`` one-hot product (the reference's synonym
merge) is ever formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ovs.backbones import TextClassifier
from ovs.inference.config import InferenceConfig


@dataclass
class PostProcessed:
    """Result for one image.

    Attributes:
        scores: ``[K, H, W]`` per-class scores: probabilities (``score="probability"``) or min-max maps (GEM); the
            label map is their argmax except where the background rule fired. With ``foreground_only`` the
            background row is zero.
        labels: ``int64 [H, W]`` class ids.
    """

    scores: Tensor
    labels: Tensor


def class_probabilities(
    name_logits: Tensor, classifier: TextClassifier, logit_scale: float, renormalize: bool = False
) -> Tensor:
    """``softmax(logit_scale * logits)`` over names, max over each class's names (spec §2.4 steps 1-2):
    ``[K_names, H, W] -> [K, H, W]``; ``renormalize`` divides by the per-pixel sum (NACLIP, spec §7)."""
    probs = classifier.merge_synonyms(torch.softmax(logit_scale * name_logits, dim=0), dim=0)  # [K, H, W]
    return probs / probs.sum(dim=0, keepdim=True) if renormalize else probs


def minmax_normalize(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation over the spatial dims, ``(l - min) / (max - min)`` (GEM ``forward``,
    spec §3.3): ``[K, H, W] -> [K, H, W]``. A constant map gives zeros instead of the reference's NaN."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def area_threshold(probs: Tensor, area_thd: float, background_index: int | None) -> Tensor:
    """Zero the probability maps of classes whose argmax area is at most ``area_thd`` times the total argmax area
    of the non-background classes (SCLIP VOC-21, spec §2.4 step 3): ``[K, H, W] -> [K, H, W]``."""
    num_classes = probs.shape[0]
    winners = probs.argmax(dim=0).flatten()  # [H * W]
    areas = probs.new_zeros(num_classes).index_add_(0, winners, probs.new_ones(winners.shape))  # [K], no sync
    foreground = torch.ones(num_classes, dtype=torch.bool, device=probs.device)
    if background_index is not None:
        foreground[background_index] = False
    keep = (areas > area_thd * areas[foreground].sum()) | ~foreground  # [K]
    return probs * keep.to(probs.dtype)[:, None, None]


def postprocess(
    name_logits: Tensor,
    classifier: TextClassifier,
    config: InferenceConfig,
    background_index: int | None,
    class_ids: Tensor | None = None,
    num_classes: int | None = None,
) -> PostProcessed:
    """Turn raw cosine logits of one image into class scores and labels (spec §2.4, §3.4, §7).

    Args:
        name_logits: ``[K_names, H, W]`` raw cosine similarities at the output resolution.
        classifier: the text classifier the logits were computed with (its classes may be a subset, see
            ``class_ids``).
        config: logit scale, thresholds, renormalisation and score type.
        background_index: dataset class id of the background, or ``None``.
        class_ids: ``int64 [K']`` dataset class id of every classifier class (``foreground_only``); ``None`` when
            the classifier covers all dataset classes in order.
        num_classes: number of dataset classes (required with ``class_ids``).
    """
    if config.prob_thd > 0 and background_index is None:
        raise ValueError("prob_thd > 0 assigns low-confidence pixels to the background, but there is no background "
                         "class; set prob_thd to 0 for datasets without background (SCLIP issue #2).")
    local_background = background_index if class_ids is None else None
    raw = class_probabilities(name_logits.float(), classifier, config.logit_scale)  # [K', H, W], synonym max
    if config.area_thd is not None:
        raw = area_threshold(raw, config.area_thd, local_background)
    probs = raw / raw.sum(dim=0, keepdim=True).clamp_min(1e-30) if config.renormalize else raw  # [K', H, W]
    if config.score == "probability":
        scores = probs
    elif config.minmax_order == "grid_first":  # already min-max normalised per window grid (CLIP Surgery)
        scores = classifier.merge_synonyms(name_logits.float(), dim=0)  # [K', H, W]
    else:
        scores = classifier.merge_synonyms(minmax_normalize(name_logits.float()), dim=0)  # [K', H, W]
    labels = scores.argmax(dim=0)  # [H, W]
    if class_ids is not None:
        if num_classes is None:
            raise ValueError("num_classes is required together with class_ids.")
        labels = class_ids[labels]
        scores = scores.new_zeros(num_classes, *scores.shape[-2:]).index_copy_(0, class_ids, scores)
    if config.prob_thd > 0:
        thresholded = probs if config.threshold_order == "after_renormalize" else raw
        labels = labels.masked_fill(thresholded.amax(dim=0) < config.prob_thd, background_index)
    return PostProcessed(scores=scores, labels=labels)

"""Mask2Former / FC-CLIP post-processing of classified soft masks (maskclippp.md §8.5).

Inputs per image: ``scores`` ``[Q, K + 1]`` (void last; from :func:`ovs.methods.maskclippp.fusion.fuse_scores`) or
``[Q, K]`` without a void column (ground-truth masks), and ``masks`` ``float [Q, H, W]`` probabilities at the
original image size. Everything is a tensor op over queries and pixels (no Python loop over masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def class_probabilities(scores: Tensor, num_classes: int) -> Tensor:
    """Softmax over the score columns, void column dropped: ``[Q, K]``."""
    return scores.float().softmax(dim=-1)[:, :num_classes]


def semantic_inference(scores: Tensor, masks: Tensor, num_classes: int) -> Tensor:
    """``sem[k] = Σ_q softmax(scores)[q, k] · mask_q``: ``[K, H, W]`` (argmax in the evaluator)."""
    probabilities = class_probabilities(scores, num_classes)  # [Q, K]
    return torch.einsum("qk,qhw->khw", probabilities, masks.float())


@dataclass
class PanopticResult:
    """``pan_seg`` ``int64 [H, W]`` (0 = no segment) and ``segments_info`` (``id``, ``category_id``, ``isthing``)."""

    pan_seg: Tensor
    segments_info: list[dict[str, Any]]


def panoptic_inference(
    scores: Tensor,
    masks: Tensor,
    is_thing: Tensor,
    object_mask_threshold: float,
    overlap_threshold: float,
) -> PanopticResult:
    """Mask2Former ``panoptic_inference`` (spec §8.5), vectorised.

    1. (score, label) = max of the softmax over all columns; keep queries with label ≠ void (when there is a void
       column) and score > ``object_mask_threshold``.
    2. Each pixel goes to the kept query with the largest score · mask.
    3. A query becomes a segment when its assigned area, its area of mask ≥ 0.5 and their intersection are non-zero
       and assigned / (mask ≥ 0.5) ≥ ``overlap_threshold``; its pixels are the intersection.
    4. Stuff segments of one class are merged into the first one (in query order); ids are 1, 2, ... in query order.

    Args:
        scores: ``[Q, K + 1]`` (void last) or ``[Q, K]``.
        masks: ``float [Q, H, W]`` probabilities.
        is_thing: ``bool [K]``.
    """
    num_classes = is_thing.shape[0]
    height, width = masks.shape[-2:]
    device = masks.device
    probabilities = scores.float().softmax(dim=-1)  # [Q, C]
    best, labels = probabilities.max(dim=-1)  # [Q]
    keep = best > object_mask_threshold
    if scores.shape[1] > num_classes:
        keep &= labels != num_classes
    kept_masks, kept_labels = masks[keep].float(), labels[keep]  # [N, H, W], [N]
    empty = PanopticResult(torch.zeros(height, width, dtype=torch.int64, device=device), [])
    if kept_masks.shape[0] == 0:
        return empty
    owner = (best[keep][:, None, None] * kept_masks).argmax(dim=0)  # [H, W]
    n = kept_masks.shape[0]
    binary = kept_masks >= 0.5  # [N, H, W]
    inside = binary.gather(0, owner[None])[0]  # [H, W]: pixel inside its owner's mask
    assigned = torch.bincount(owner.flatten(), minlength=n)  # [N]
    original = binary.flatten(1).sum(dim=1)  # [N]
    segment_area = torch.bincount(owner[inside], minlength=n)  # [N]
    accepted = (assigned > 0) & (original > 0) & (segment_area > 0)
    accepted &= assigned.double() / original.clamp_min(1).double() >= overlap_threshold
    thing = is_thing.to(device)[kept_labels]  # [N]
    # A stuff query opens a new segment only if no earlier accepted query has its class.
    order = torch.arange(n, device=device)
    same_class_before = (kept_labels[:, None] == kept_labels[None]) & (order[None] < order[:, None])  # [N, N]
    earlier_stuff = same_class_before & (accepted & ~thing)[None]
    new_segment = accepted & (thing | ~earlier_stuff.any(dim=1))
    segment_id = torch.cumsum(new_segment.long(), dim=0) * new_segment  # [N], 0 when not a new segment
    first_of_class = torch.where(earlier_stuff, order[None], n).min(dim=1).values  # [N]
    merged = torch.where(new_segment | ~accepted, segment_id, segment_id[first_of_class.clamp_max(n - 1)])
    pixel_id = merged[owner]  # [H, W]
    pan_seg = torch.where(inside & accepted[owner], pixel_id, torch.zeros_like(pixel_id))
    ids = segment_id[new_segment].tolist()
    classes = kept_labels[new_segment].tolist()
    things = thing[new_segment].tolist()
    info = [{"id": i, "category_id": c, "isthing": t} for i, c, t in zip(ids, classes, things)]
    return PanopticResult(pan_seg, info)


@dataclass
class InstanceResult:
    """``masks`` ``bool [N, H, W]``, ``scores`` ``float [N]``, ``labels`` ``int64 [N]``."""

    masks: Tensor
    scores: Tensor
    labels: Tensor


def instance_inference(
    scores: Tensor,
    masks: Tensor,
    num_classes: int,
    detections_per_image: int = 100,
    thing_classes: Tensor | None = None,
) -> InstanceResult:
    """Mask2Former ``instance_inference`` (spec §8.5).

    Class scores = softmax without the void column; top-k over the flattened ``Q x K``; with ``thing_classes``
    (panoptic on) only thing labels are kept; binary mask = mask > 0.5; final score = class score × mean mask
    probability inside the binary mask.
    """
    probabilities = class_probabilities(scores, num_classes)  # [Q, K]
    flat = probabilities.flatten()  # [Q * K]
    k = min(detections_per_image, flat.numel())
    top_scores, top_index = flat.topk(k, sorted=True)
    labels = top_index % num_classes
    query = top_index // num_classes
    if thing_classes is not None:
        keep = thing_classes.to(labels.device)[labels]
        top_scores, labels, query = top_scores[keep], labels[keep], query[keep]
    soft = masks[query].float()  # [N, H, W]
    binary = soft > 0.5
    mask_score = (soft * binary).flatten(1).sum(dim=1) / (binary.flatten(1).sum(dim=1) + 1e-6)
    return InstanceResult(binary, top_scores * mask_score, labels)

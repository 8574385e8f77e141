"""The mask-generator interface of MaskCLIP++ inference (maskclippp.md §8.2 steps 1-4).

A :class:`MaskGenerator` maps a batch in the dataset contract (``docs/architecture.md``: ``image`` uint8
``[3, H, W]``, ``meta`` with the original ``height`` / ``width``, optional ground truth) to one
:class:`MaskProposals` per image: soft masks ``[Q, H, W]`` in ``[0, 1]`` at the original image size and, where the
generator classifies its queries, class logits ``[Q, K_gen + 1]`` whose last column is void.

* A **closed-vocabulary** generator (Mask2Former) scores its own training classes: ``logits_vocabulary`` is that
  vocabulary and MaskCLIP++ maps the columns to the test classes through a look-up table (§8.3).
* An **open-vocabulary** generator (FC-CLIP, MAFT+) scores the *test* vocabulary it was given with
  :meth:`MaskGenerator.set_vocabulary`: ``logits_vocabulary`` is ``None`` and the columns are the test classes.

``training_vocabulary`` is the generator's training set 𝒦 (the "seen" classes of eq. 4 and of mIoU seen / unseen,
spec §11 Q10); ``None`` when the generator has none (ground truth, external masks without logits).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = dict[str, list[Any]]
"""A list-collated batch of dataset samples (``ovs.data.collate.list_collate``)."""


@dataclass
class MaskProposals:
    """Masks (and optional class logits) of one image.

    Attributes:
        masks: ``float [Q, H, W]`` in ``[0, 1]`` at the original image size.
        logits: ``float [Q, K_gen + 1]`` with void last, or ``None``.
        logits_vocabulary: class names of the logit columns (closed vocabulary), ``None`` when the columns are the
            test vocabulary (open vocabulary) or there are no logits.
    """

    masks: Tensor
    logits: Tensor | None = None
    logits_vocabulary: list[list[str]] | None = None

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or not self.masks.is_floating_point():
            raise ValueError(f"masks must be a float tensor [Q, H, W], got {self.masks.dtype} {tuple(self.masks.shape)}.")
        if self.logits is not None:
            if self.logits.ndim != 2 or self.logits.shape[0] != self.masks.shape[0]:
                raise ValueError(
                    f"logits must be [Q, K + 1] with Q = {self.masks.shape[0]} masks, got {tuple(self.logits.shape)}."
                )
            if self.logits_vocabulary is not None and self.logits.shape[1] != len(self.logits_vocabulary) + 1:
                raise ValueError(
                    f"logits have {self.logits.shape[1]} columns; the generator vocabulary has "
                    f"{len(self.logits_vocabulary)} classes plus void."
                )


class MaskGenerator(nn.Module, ABC):
    """Frozen mask generator used only at evaluation (maskclippp.md §8)."""

    training_vocabulary: list[list[str]] | None = None
    """Class names the generator was trained on (𝒦), ``None`` if it has none."""

    open_vocabulary: bool = False
    """True when the logits score the vocabulary given to :meth:`set_vocabulary`."""

    def __init__(self) -> None:
        super().__init__()
        self.vocabulary: list[list[str]] | None = None

    def set_vocabulary(self, class_names: Sequence[Sequence[str]]) -> None:
        """Test vocabulary (synonyms per class); open-vocabulary generators score their queries against it."""
        self.vocabulary = [list(names) for names in class_names]

    @abstractmethod
    def forward(self, batch: Batch) -> list[MaskProposals]:
        """One :class:`MaskProposals` per image of ``batch``, masks at ``meta["height"] x meta["width"]``."""


def original_sizes(batch: Batch) -> list[tuple[int, int]]:
    """``(height, width)`` of every image before any test-time resize (``meta``, else the image itself)."""
    metas = batch.get("meta") or [{} for _ in batch["image"]]
    return [
        (int(meta.get("height", image.shape[-2])), int(meta.get("width", image.shape[-1])))
        for image, meta in zip(batch["image"], metas)
    ]


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``float [Q, h, w]`` masks to ``size`` (no-op when equal; empty sets keep Q = 0)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros(0, *size)
    return F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]


def empty_proposals(size: tuple[int, int], device: torch.device | str = "cpu") -> MaskProposals:
    """No mask for an image of ``size``."""
    return MaskProposals(torch.zeros(0, *size, device=device))

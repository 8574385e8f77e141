"""Training-time text side of MaskCLIP++: one random synonym per class per step (spec §6.3)."""

from __future__ import annotations

import torch
from torch import Tensor


def synonym_layout(name_to_class: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """First name index and number of names of each class, ``([K], [K])``.

    Names must be ordered class by class (as :func:`ovs.backbones.build_text_classifier` returns them) and every
    class must have at least one name.
    """
    counts = torch.bincount(name_to_class, minlength=num_classes)  # [K]
    if counts.numel() != num_classes or bool((counts == 0).any()):
        raise ValueError(f"Every one of the {num_classes} classes needs at least one name.")
    if bool((name_to_class[1:] < name_to_class[:-1]).any()):
        raise ValueError("Names must be grouped class by class (class-major order).")
    return counts.cumsum(0) - counts, counts


def sample_synonyms(offsets: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Index of one uniformly drawn name per class, ``[K]`` (spec §6.3: same draw for the whole local batch).

    Args:
        offsets, counts: from :func:`synonym_layout` (on the generator's device).
        generator: seeded per training step, so that a resumed run draws the same names.
    """
    draws = torch.rand(counts.shape, generator=generator, device=counts.device)  # [K] in [0, 1)
    return offsets + (draws * counts).long().clamp_max(counts - 1)

"""Class-reweighted cross-entropy of MaskCLIP++ (paper App. C.2 Table 14, spec §5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reweight_ce_weights(labels: Tensor, image_index: Tensor, balance_classes: bool = True) -> Tensor:
    """Per-mask weights of the reweighted CE (spec §5), summing to 1.

    With B' images that have at least one mask, C_b distinct classes in image b and n_{b,c} masks of class c in image
    b, ``balance_classes`` gives ``1 / (B' · C_b · n_{b,c})`` — the mean over images of the mean over present classes
    of the mean over that class's masks. Without it: ``1 / (B' · Q_b)`` (per-image mean over masks, mean over images).

    Args:
        labels: class of each mask ``[N]`` (int64, ``0..K-1``).
        image_index: image of each mask ``[N]`` (int64).
        balance_classes: reweight by class (``BALANCE_CLS``).

    Returns:
        ``[N]`` float weights.
    """
    if labels.shape != image_index.shape or labels.ndim != 1:
        raise ValueError(f"labels {tuple(labels.shape)} and image_index {tuple(image_index.shape)} must be equal 1-D.")
    _, image_slot, masks_per_image = torch.unique(image_index, return_inverse=True, return_counts=True)
    num_images = masks_per_image.numel()  # B'
    if not balance_classes:
        return 1.0 / (num_images * masks_per_image[image_slot].float())
    num_labels = labels.max() + 1
    pair = image_slot * num_labels + labels  # one id per (image, class)
    unique_pairs, pair_slot, masks_per_pair = torch.unique(pair, return_inverse=True, return_counts=True)
    classes_per_image = torch.bincount(unique_pairs // num_labels, minlength=num_images)  # C_b
    return 1.0 / (num_images * classes_per_image[image_slot].float() * masks_per_pair[pair_slot].float())


class ReweightCELoss(nn.Module):
    """Σ_n w_n · CE(logits_n / τ, y_n) with the weights of :func:`reweight_ce_weights` (spec §5).

    The loss is local to the process; DDP averages the gradients (no cross-GPU normalisation, as the reference).

    Args:
        temperature: τ (1.0 in every config).
        balance_classes: ``BALANCE_CLS`` (True in every config).
    """

    def __init__(self, temperature: float = 1.0, balance_classes: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = temperature
        self.balance_classes = balance_classes

    def forward(self, logits: Tensor, labels: Tensor, image_index: Tensor) -> Tensor:
        """``logits [N, K]``, ``labels [N]``, ``image_index [N]`` (N ≥ 1) -> scalar loss."""
        if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
            raise ValueError(f"Expected logits [N, K] with N = len(labels) >= 1, got {tuple(logits.shape)}.")
        ce = F.cross_entropy(logits.float() / self.temperature, labels, reduction="none")  # [N]
        weights = reweight_ce_weights(labels, image_index, self.balance_classes).to(ce.dtype)
        return (weights * ce).sum()

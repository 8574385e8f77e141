"""Class-reweighted cross-entropy on a constructed batch (spec §5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs.methods.maskclippp.loss import ReweightCELoss, reweight_ce_weights

# image 0: two masks of class 3 and one of class 5; image 2: one mask of class 7; image 1 has no masks
LABELS = torch.tensor([3, 3, 5, 7])
IMAGES = torch.tensor([0, 0, 0, 2])


def test_balanced_weights_per_image_class_and_mask_count() -> None:
    # B' = 2 images with masks; image 0 has C = 2 classes (class 3: 2 masks, class 5: 1 mask); image 2 has C = 1
    expected = torch.tensor([1 / (2 * 2 * 2), 1 / (2 * 2 * 2), 1 / (2 * 2 * 1), 1 / (2 * 1 * 1)])
    torch.testing.assert_close(reweight_ce_weights(LABELS, IMAGES), expected)
    assert reweight_ce_weights(LABELS, IMAGES).sum() == pytest.approx(1.0)


def test_unbalanced_weights_are_per_image_means() -> None:
    expected = torch.tensor([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    torch.testing.assert_close(reweight_ce_weights(LABELS, IMAGES, balance_classes=False), expected)


def test_one_mask_per_class_is_a_per_image_mean() -> None:
    """COCO-Stuff: one mask per class, so balancing reduces to the per-image mean over masks."""
    labels, images = torch.tensor([0, 4, 9, 1, 2]), torch.tensor([0, 0, 0, 1, 1])
    torch.testing.assert_close(reweight_ce_weights(labels, images),
                               reweight_ce_weights(labels, images, balance_classes=False))


def test_loss_is_the_weighted_sum_of_cross_entropies() -> None:
    logits = torch.randn(4, 10)
    weights = torch.tensor([1 / 8, 1 / 8, 1 / 4, 1 / 2])
    expected = (weights * F.cross_entropy(logits / 2.0, LABELS, reduction="none")).sum()
    torch.testing.assert_close(ReweightCELoss(temperature=2.0)(logits, LABELS, IMAGES), expected)


def test_loss_input_validation() -> None:
    with pytest.raises(ValueError, match=r"len\(labels\) >= 1"):
        ReweightCELoss()(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        ReweightCELoss(temperature=0.0)

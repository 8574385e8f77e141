"""MaskCLIP++ IGNORE_EMPTY (spec §5, per-architecture default §2.2): a ground-truth mask that vanishes on the feature
grid is dropped from the loss for ViTs and kept for ConvNeXt."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer

from ovs.methods.maskclippp import MaskCLIPPP
from tests.conftest import TINY_CONVNEXT, TINY_VIT
from tests.methods.maskclippp.conftest import FAST, FixedDataModule, make_sample, single_names

STRIDE = {TINY_VIT: 8, TINY_CONVNEXT: 32}


def with_vanishing_mask(seed: int) -> dict[str, Any]:
    """Three column masks plus a 2 x 2 corner mask. Bilinear downsampling by s (align_corners False) samples the
    image at (i + 0.5) s - 0.5 = 3.5, 11.5, ... (s = 8) or 15.5, 47.5 (s = 32): never inside the corner, so its area
    on either grid is exactly 0."""
    sample = make_sample(seed)
    corner = torch.zeros(1, 64, 64, dtype=torch.bool)
    corner[0, :2, :2] = True
    sample["masks"] = torch.cat([sample["masks"], corner])
    sample["mask_labels"] = torch.cat([sample["mask_labels"], torch.tensor([5])])
    return sample


@pytest.mark.parametrize(("model_name", "trained_masks"), [(TINY_VIT, 6), (TINY_CONVNEXT, 8)])
def test_vanishing_mask_is_dropped_for_vit_and_kept_for_convnext(model_name: str, trained_masks: int) -> None:
    samples = [with_vanishing_mask(0), with_vanishing_mask(1)]
    stride = STRIDE[model_name]
    grid_area = F.interpolate(samples[0]["masks"][-1:, None].float(), scale_factor=1 / stride, mode="bilinear",
                              align_corners=False).sum()
    assert float(grid_area) == 0.0  # the corner vanishes on this architecture's grid
    model = MaskCLIPPP(model_name, train_class_names=single_names(), total_batch_size=2, psm_width=16, psm_heads=4,
                       **FAST)
    assert model.ignore_empty is (model_name == TINY_VIT)  # the per-architecture default
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, max_steps=1)
    trainer.fit(model, FixedDataModule(samples))
    # 2 images x 3 column masks survive everywhere; the 2 corner masks only where IGNORE_EMPTY is off
    assert float(trainer.logged_metrics["train/num_masks"]) == trained_masks

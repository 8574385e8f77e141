"""MaskCLIP++ training on CUDA (issue 17): one training step under bf16 autocast gives the fp32 loss to 1e-2."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from ovs.methods.maskclippp import MaskCLIPPP
from tests.conftest import TINY_CONVNEXT, TINY_VIT
from tests.methods.maskclippp.conftest import FAST, FixedDataModule, make_sample

LOSS_ATOL = 1e-2
"""Issue 17: |loss(bf16-mixed) - loss(fp32)| <= 1e-2 on the first step (same weights, batch and dropout draws)."""


class FirstLoss(Callback):
    def __init__(self) -> None:
        self.loss: float | None = None

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, i: int) -> None:
        self.loss = float(outputs["loss"])


def first_step_loss(model_name: str, precision: str, accelerator: str, size: int) -> float:
    """Loss of the first training step of a fresh (seed 0) MaskCLIP++ on two fixed ``size`` x ``size`` samples."""
    torch.manual_seed(0)
    model = MaskCLIPPP(model_name, pretrained=None, train_class_names="coco_panoptic", total_batch_size=2,
                       psm_width=16, psm_heads=4, **FAST)
    recorder = FirstLoss()
    trainer = Trainer(accelerator=accelerator, devices=1, precision=precision, max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, callbacks=[recorder])
    trainer.fit(model, FixedDataModule([make_sample(0, size, num_masks=5), make_sample(1, size, num_masks=5)]))
    assert recorder.loss is not None
    return recorder.loss


@pytest.mark.cuda
@pytest.mark.parametrize(("model_name", "size"), [(TINY_VIT, 64), (TINY_CONVNEXT, 64), ("convnext_base_w_320", 512)])
def test_bf16_training_step_matches_fp32_loss(model_name: str, size: int, exact_fp32: None) -> None:
    fp32 = first_step_loss(model_name, "32-true", "gpu", size)
    bf16 = first_step_loss(model_name, "bf16-mixed", "gpu", size)
    assert fp32 > 0.1  # a real cross-entropy over 133 classes, not a zero loss
    assert bf16 != fp32  # bf16 autocast did run
    assert abs(bf16 - fp32) <= LOSS_ATOL, f"bf16 loss {bf16:.5f} vs fp32 {fp32:.5f}"

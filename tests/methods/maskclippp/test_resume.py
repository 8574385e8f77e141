"""Kill-and-resume from the last checkpoint equals an uninterrupted seeded run (spec §2.3 checkpoints)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from ovs.data import COCOPanopticDataModule
from ovs.methods.maskclippp import MaskCLIPPP
from tests.conftest import TINY_CONVNEXT
from tests.methods.maskclippp.conftest import FAST


class KillAt(Callback):
    """Stop the run after ``step`` optimiser steps, as if the job were killed right after that checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def fit(
    model: MaskCLIPPP,
    root: Path,
    directory: Path | None = None,
    ckpt: Path | None = None,
    kill_at: int | None = None,
    num_workers: int = 0,
) -> Trainer:
    """6 steps (the schedule length) of the same configuration; optionally checkpointing, resuming or killed."""
    torch.manual_seed(0)  # what seed_everything does at the start of every tools/train.py run
    callbacks: list[Callback] = [] if kill_at is None else [KillAt(kill_at)]
    if directory is not None:
        callbacks.append(ModelCheckpoint(dirpath=directory, save_last=True, every_n_train_steps=1))
    trainer = Trainer(
        accelerator="cpu", devices=1, max_steps=6, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=directory is not None, callbacks=callbacks,
        limit_val_batches=0,
    )
    trainer.fit(model, COCOPanopticDataModule(root=root, image_size=64, num_workers=num_workers), ckpt_path=ckpt)
    return trainer


def test_resume_from_last_checkpoint_equals_uninterrupted_run(fake_coco_root: Path, tmp_path: Path) -> None:
    """4 fake images, 2 per step: the run is killed mid-epoch 2 (step 3) and resumed to step 6, so the loader resumes
    inside an epoch, by 2 worker processes (the uninterrupted run loads in the main process). The pseudo-text PSM's
    attention dropout, the LSJ augmentation, the sampler and the synonym draws all consume randomness."""
    initial = MaskCLIPPP(TINY_CONVNEXT, train_class_names="coco_panoptic", total_batch_size=2, psm_heads=4, lr=1e-2,
                         **FAST)
    assert initial.psm.attention.dropout == 0.1
    uninterrupted = copy.deepcopy(initial)
    fit(uninterrupted, fake_coco_root)
    first = copy.deepcopy(initial)
    fit(first, fake_coco_root, tmp_path, kill_at=3, num_workers=2)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3
    resumed = copy.deepcopy(initial)
    trainer = fit(resumed, fake_coco_root, tmp_path / "resumed", ckpt=tmp_path / "last.ckpt", num_workers=2)
    assert trainer.global_step == 6
    expected = dict(uninterrupted.named_parameters())
    changed = 0
    for name, parameter in resumed.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, expected[name], atol=1e-6, rtol=0, msg=name)
            changed += int(not torch.equal(parameter, dict(first.named_parameters())[name]))
    assert changed > 0  # steps 4-6 did change the weights

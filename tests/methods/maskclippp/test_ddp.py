"""A 2-process CPU DDP run (gloo) averages the same gradients as one process on the concatenated batch (spec §5)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from ovs.methods.maskclippp import MaskCLIPPP
from tests.conftest import TINY_VIT
from tests.methods.maskclippp.conftest import FAST, FixedDataModule, make_sample


class SaveGradients(Callback):
    """Write every trainable gradient of the first optimiser step (after the DDP all-reduce) to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def on_before_optimizer_step(self, trainer: Trainer, module: LightningModule, optimizer: Optimizer) -> None:
        grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        torch.save(grads, self.directory / f"rank{trainer.global_rank}_of{trainer.world_size}.pt")


def run(model: MaskCLIPPP, devices: int, strategy: str, directory: Path) -> None:
    Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[SaveGradients(directory)],
        limit_val_batches=0,
    ).fit(model, FixedDataModule([make_sample(0, num_masks=3), make_sample(1, num_masks=2)]))


def test_two_process_gloo_ddp_matches_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=2, psm_width=16, **FAST)
    run(copy.deepcopy(model), 1, "auto", tmp_path)
    run(copy.deepcopy(model), 2, "ddp_spawn", tmp_path)
    single = torch.load(tmp_path / "rank0_of1.pt")
    for rank in range(2):
        distributed = torch.load(tmp_path / f"rank{rank}_of2.pt")
        assert set(distributed) == set(single) and len(single) == 12  # 6 in_proj, pos, log α, 4 PSM 
        for name, grad in single.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(distributed[name], grad, atol=1e-6, rtol=1e-4, msg=name)

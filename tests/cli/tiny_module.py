"""A tiny LightningModule / DataModule pair to exercise the CLI machinery (run dirs, checkpoints, resume)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader, TensorDataset

from ovs.backbones import create_clip


class TinyCLIPRegressor(LightningModule):
    """Regresses a random target from a tiny random CLIP's image embedding."""

    def __init__(self, model_name: str = "ovs-test-tiny-vit", lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.clip = create_clip(model_name)
        self.lr = lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, target = batch
        loss = torch.nn.functional.mse_loss(self.clip.model.encode_image(images), target)
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, target = batch
        mse = torch.nn.functional.mse_loss(self.clip.model.encode_image(images), target)
        self.log("test/mse", mse, batch_size=len(images))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class TinyDataModule(LightningDataModule):
    """Random 32x32 images and 32-d targets (also the test set)."""

    def __init__(self, num_samples: int = 8, batch_size: int = 2) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size

    def dataset(self) -> TensorDataset:
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(self.num_samples, 3, 32, 32, generator=g),
                             torch.randn(self.num_samples, 32, generator=g))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """The training samples in one batch (``test/mse`` is then the MSE over all of them)."""
        return DataLoader(self.dataset(), batch_size=self.num_samples)

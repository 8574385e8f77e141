"""MaskCLIP++ test set-up: a tiny EVA02-style timm tower, fake COCO-Panoptic data and a fixed-batch DataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import pytest
import timm
import torch
from lightning import LightningDataModule
from timm.models import register_model
from timm.models.eva import Eva
from torch.utils.data import DataLoader, Dataset

from ovs.data import list_collate
from ovs.data.fake import write_fake_coco_panoptic

TINY_EVA = "ovs-test-tiny-eva"
TINY_EVA01 = "ovs-test-tiny-eva01"
FAST = {"templates": "single"}
"""Keyword arguments that keep the text side cheap in tests (one template instead of fcclip14)."""
open_clip.add_model_config(Path(__file__).parent / "model_configs")

if not timm.models.is_model("ovs_test_tiny_eva02"):

    @register_model
    def ovs_test_tiny_eva02(pretrained: bool = False, **kwargs: Any) -> Eva:
        """EVA02-CLIP block structure (separate q/k/v, sub-LN, SwiGLU, RoPE) at test size: 3 blocks, width 32."""
        return Eva(
            img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4 * 2 / 3, qkv_fused=False,
            swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True, ref_feat_shape=(4, 4),
            num_classes=kwargs["num_classes"], global_pool=kwargs["global_pool"],
        )

    @register_model
    def ovs_test_tiny_eva01(pretrained: bool = False, **kwargs: Any) -> Eva:
        """EVA01-CLIP-g block structure (fused qkv with q/v biases, GELU MLP, no RoPE) at test size."""
        return Eva(
            img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=4.0, qkv_fused=True,
            num_classes=kwargs["num_classes"], global_pool=kwargs["global_pool"],
        )


@pytest.fixture(scope="session")
def fake_coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake COCO-Panoptic (4 train / 4 val images of 64 x 64, real category ids, one crowd segment each)."""
    root = tmp_path_factory.mktemp("coco")
    write_fake_coco_panoptic(root, num_images=4, height=64, width=64)
    return root


@pytest.fixture(scope="session")
def tiny_vit_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fixed random tiny-ViT CLIP saved as a weights file: a deterministic "pretrained" base for checkpoints."""
    from ovs.backbones import create_clip
    from tests.conftest import TINY_VIT

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.pt"
    torch.save(create_clip(TINY_VIT).model.state_dict(), path)
    return path


def single_names() -> list[list[str]]:
    """COCO-Panoptic's 133 classes with only their display name (no synonym sampling noise)."""
    from ovs.data import load_class_names

    return [names[:1] for names in load_class_names("coco_panoptic")]


def make_sample(seed: int, size: int = 64, num_masks: int = 3, num_classes: int = 133) -> dict[str, Any]:
    """One training sample with ``num_masks`` disjoint rectangular masks (the last two share a class)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
    masks = torch.zeros(num_masks, size, size, dtype=torch.bool)
    step = size // num_masks
    for q in range(num_masks):
        masks[q, :, q * step : (q + 1) * step] = True
    labels = torch.randint(0, num_classes, (num_masks,), generator=g)
    labels[-1] = labels[-2]
    return {"image": image, "masks": masks, "mask_labels": labels}


class FixedDataset(Dataset):
    def __init__(self, samples: list[dict[str, Any]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]


class FixedDataModule(LightningDataModule):
    """Fixed samples in a fixed order (no shuffling), training only; ``class_names`` of COCO-Panoptic."""

    def __init__(self, samples: list[dict[str, Any]], batch_size: int = 2) -> None:
        super().__init__()
        from ovs.data import load_class_names

        self.samples = samples
        self.batch_size = batch_size
        self.class_names = load_class_names("coco_panoptic")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(FixedDataset(self.samples), batch_size=self.batch_size, shuffle=False,
                          collate_fn=list_collate)

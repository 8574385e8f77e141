"""Shared test set-up: tiny random CLIP configs (no downloads) and a deterministic seed per test."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

TEST_MODEL_CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(TEST_MODEL_CONFIGS)

TINY_VIT = "ovs-test-tiny-vit"
TINY_CONVNEXT = "ovs-test-tiny-convnext"
TINY_RESNET = "ovs-test-tiny-resnet"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_vit():
    """A random 3-block ViT CLIP (width 64, 4 heads, patch 8) shared by the whole session (eval mode, read-only)."""
    from ovs.backbones import create_clip

    torch.manual_seed(0)
    return create_clip(TINY_VIT)

"""Helpers for the generator tests: the optional detectron2 stack (its tests fail under CI, where `make test` installs
it, and skip elsewhere when it is missing) and a closed-vocabulary generator run through MaskCLIP++."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ovs.generators.native import detectron2_to_native


def require_detectron2() -> None:
    """Import detectron2 + Mask2Former through the compat layer; fail under ``CI=true`` if that is impossible."""
    from ovs.generators import d2compat

    try:
        d2compat.import_mask2former()
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"detectron2 / Mask2Former must be installed in CI (make install-detectron2): {error}")
        pytest.skip(f"detectron2 / Mask2Former not installed (make install-detectron2): {error}")


def load_maskformer2_state(native: Any, reference: torch.nn.Module) -> None:
    """Fill the native Mask2Former of ``native`` (a ``NativeMask2Former``) with ``reference``'s (maskformer2's
    ``MaskFormer``) weights through the key map: every reference key must map and every native tensor be filled."""
    state, unmatched = detectron2_to_native(reference.state_dict(), native.model.fpn_levels)
    assert unmatched == []
    result = native.model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def assert_released_shapes(native: Any, reference: torch.nn.Module) -> None:
    """``native``'s Mask2Former has exactly the tensor names (after the key map) and shapes of maskformer2's
    ``reference``, and as many parameters."""
    state, unmatched = detectron2_to_native(reference.state_dict(), native.model.fpn_levels)
    assert unmatched == []
    assert {k: tuple(v.shape) for k, v in native.model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items()}
    assert sum(v.numel() for v in native.model.parameters()) == sum(v.numel() for v in reference.parameters())


def maskclippp_on_fake_ade150(generator: Any, root: Path) -> tuple[Any, dict[str, float]]:
    """A tiny MaskCLIP++ with ``generator`` (γ = 0.2, panoptic and instance on) tested on a 2-image fake ADE-150
    written under ``root``: the model (for its seen mask and look-up tables) and the logged metrics."""
    from lightning import Trainer

    from ovs.data import ADE20KDataModule
    from ovs.data.fake import write_fake_ade20k
    from ovs.methods.maskclippp import MaskCLIPPP
    from tests.conftest import TINY_VIT

    write_fake_ade20k(root, num_images=2, height=32, width=48)
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", psm="linear", psm_width=16, templates="single",
                       eval_psm="psm", generator=generator, gamma=0.2, panoptic_on=True, instance_on=True,
                       object_mask_threshold=0.0)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root)
    metrics = trainer.test(model, datamodule=ADE20KDataModule(variant="150", task="panoptic", root=root),
                           verbose=False)[0]
    return model, {key: float(value) for key, value in metrics.items()}

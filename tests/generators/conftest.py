"""Helpers for the generator tests: the optional detectron2 stack (its tests fail under CI, where `make test` installs
it, and skip elsewhere when it is missing) and a closed-vocabulary generator run through MaskCLIP++."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


def require_detectron2() -> None:
    """Import detectron2 + Mask2Former through the compat layer; fail under ``CI=true`` if that is impossible."""
    from ovs.generators import d2compat

    try:
        d2compat.import_mask2former()
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"detectron2 / Mask2Former must be installed in CI (make install-detectron2): {error}")
        pytest.skip(f"detectron2 / Mask2Former not installed (make install-detectron2): {error}")


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

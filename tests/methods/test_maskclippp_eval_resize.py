"""MaskCLIP++ evaluation resize (issue 11 item 3): the reference truncates the long side, training keeps rounding."""

from __future__ import annotations

import torch

from ovs.methods.maskclippp import MaskCLIPPP
from tests.conftest import TINY_VIT


def test_evaluation_resize_truncates_the_long_side_and_training_rounds() -> None:
    """416 x 320 to short side 512: int(416 * 512 / 320) = int(665.6) = 665 in evaluation (prepare_batch's default,
    used by the GT-mask oracle and generator inference); the training path keeps half-up rounding (666)."""
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", psm_width=16, templates="single")
    image = torch.zeros(3, 416, 320, dtype=torch.uint8)
    masks = torch.ones(1, 416, 320, dtype=torch.bool)
    evaluation = model.prepare_batch([image], [masks], short_side=512)
    assert evaluation.sizes.tolist() == [[665, 512]] and evaluation.masks.shape[-2:] == (672, 512)  # padded to /8
    assert evaluation.masks[0, :665].eq(1).all() and evaluation.masks[0, 665:].eq(0).all()
    training = model.prepare_batch([image], [masks], short_side=512, truncate_long_side=False)
    assert training.sizes.tolist() == [[666, 512]]

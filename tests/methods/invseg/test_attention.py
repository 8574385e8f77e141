"""Attention capture on a tiny random UNet: processor equivalence, resolution selection, shapes, early exit."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch

from ovs.methods.invseg.attention import AttentionCapture, CaptureProcessor, processor_resolution
from tests.methods.invseg.conftest import require_diffusers


@pytest.fixture()
def unet(tiny_sd):
    return copy.deepcopy(tiny_sd.unet)


def test_processor_resolution_of_sd21_keys() -> None:
    """SD 2.1-base at 512 px: 64-latent, 4 levels; res 16 = down_blocks.2, up_blocks.1 (spec §4 table)."""
    assert processor_resolution("down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor", 64, 4) == 64
    assert processor_resolution("down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor", 64, 4) == 16
    assert processor_resolution("mid_block.attentions.0.transformer_blocks.0.attn1.processor", 64, 4) == 8
    assert processor_resolution("up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor", 64, 4) == 16
    assert processor_resolution("up_blocks.3.attentions.0.transformer_blocks.0.attn1.processor", 64, 4) == 64


def test_capture_processor_reproduces_the_default_processor(unet) -> None:
    require_diffusers()
    from diffusers.models.attention_processor import AttnProcessor

    latents, t, text = torch.randn(2, 4, 16, 16), torch.tensor([10, 200]), torch.randn(2, 77, 32)
    unet.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        reference = unet(latents, t, encoder_hidden_states=text).sample
        store = defaultdict(list)
        unet.set_attn_processor({k: CaptureProcessor(store, processor_resolution(k, 16, 3))
                                 for k in unet.attn_processors})
        captured = unet(latents, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(captured, reference, rtol=1e-5, atol=1e-5)
    assert sorted(store) == [(4, "cross"), (4, "self"), (8, "cross"), (8, "self"), (16, "cross"), (16, "self")]


def test_only_the_configured_resolution_is_captured_with_the_expected_shapes(unet) -> None:
    capture = AttentionCapture(unet, 16, (8,), early_exit=False)
    level_one = [k for k in unet.attn_processors if k.startswith(("down_blocks.1.", "up_blocks.1."))]
    assert capture.captured_keys == level_one
    assert all(type(p).__name__ == "AttnProcessor2_0" for k, p in unet.attn_processors.items()
               if k not in capture.captured_keys)
    with torch.no_grad():
        out = capture(torch.randn(2, 4, 16, 16), torch.tensor([50, 50]), torch.randn(2, 77, 32))
    assert set(out.self_maps) == {8} and out.self_maps[8].shape == (2, 64, 64)
    assert set(out.cross_maps) == {8} and out.cross_maps[8].shape == (2, 64, 77)
    torch.testing.assert_close(out.self_maps[8].sum(-1), torch.ones(2, 64))
    torch.testing.assert_close(out.cross_maps[8].sum(-1), torch.ones(2, 64))
    both = AttentionCapture(unet, 16, (16, 8), early_exit=False)
    with torch.no_grad():
        out = both(torch.randn(1, 4, 16, 16), torch.tensor([50]), torch.randn(1, 77, 32))
    assert out.self_maps[16].shape == (1, 256, 256) and out.cross_maps[16].shape == (1, 256, 77)


def test_unknown_resolution_names_the_available_ones(unet) -> None:
    with pytest.raises(ValueError, match=r"has \[16, 8, 4\]"):
        AttentionCapture(unet, 16, (32,))


def test_early_exit_skips_the_rest_and_keeps_gradients_on_every_token_row(unet) -> None:
    calls = []
    unet.up_blocks[2].register_forward_hook(lambda *_: calls.append("up2"))
    unet.conv_out.register_forward_hook(lambda *_: calls.append("out"))
    capture = AttentionCapture(unet, 16, (8,))
    text = torch.randn(1, 77, 32, requires_grad=True)
    out = capture(torch.randn(1, 4, 16, 16), torch.tensor([100]), text)
    assert calls == []
    (out.cross_maps[8][..., :5].sum() + (out.self_maps[8] ** 2).sum()).backward()
    assert text.grad is not None and (text.grad.abs().sum(-1) > 0).all()

"""The hookable ViT forward against an independent step-by-step computation (training-free spec §1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import (
    BlockOverride,
    ParallelPathway,
    ViTPolicy,
    create_clip,
    interpolate_pos_embed,
    softmax_attention,
)
from tests.conftest import TINY_VIT
from tests.plain_vit import embed, layer_norm


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def reference_tokens(visual, x: torch.Tensor, pos: torch.Tensor, last_block_attention=None) -> torch.Tensor:
    """Plain-tensor CLIP ViT: conv, CLS, pos, ln_pre, blocks (explicit softmax attention), ln_post, proj."""
    b = x.shape[0]
    tokens = embed(visual, x, pos)
    blocks = visual.transformer.resblocks
    for i, blk in enumerate(blocks):
        heads = blk.attn.num_heads
        hx = layer_norm(tokens, blk.ln_1)
        qkv = hx @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
        q, k, v = qkv.chunk(3, dim=-1)
        split = lambda t: t.reshape(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        scale = 1 / math.sqrt(q.shape[-1])
        if last_block_attention is not None and i == len(blocks) - 1:
            o = last_block_attention(q, k, v, scale)
        else:
            o = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
        o = o.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])
        tokens = tokens + o @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        hx = layer_norm(tokens, blk.ln_2)
        hidden = quick_gelu(hx @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias)
        tokens = tokens + hidden @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias
    return layer_norm(tokens, visual.ln_post) @ visual.proj


@pytest.fixture(scope="module")
def vit_b16():
    """Random OpenAI-architecture ViT-B/16 (QuickGELU), as the spec's reference tests use."""
    torch.manual_seed(0)
    return create_clip("ViT-B-16", force_quick_gelu=True)


def test_vit_b16_dense_tokens_match_step_by_step(vit_b16) -> None:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        out = vit_b16.dense.forward_dense(x)
        ref = reference_tokens(vit_b16.model.visual, x, vit_b16.model.visual.positional_embedding)
    assert out.grid == (14, 14)
    assert out.tokens.shape == (1, 197, 512)
    torch.testing.assert_close(out.tokens, ref, atol=1e-5, rtol=0)
    # the open_clip forward gives the same CLS embedding
    torch.testing.assert_close(vit_b16.model.visual(x), ref[:, 0], atol=1e-5, rtol=0)


def test_quick_gelu_is_used_for_openai_architecture(vit_b16) -> None:
    act = vit_b16.model.visual.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"


def test_dense_tokens_at_other_size_use_interpolated_pos(tiny_vit) -> None:
    visual = tiny_vit.model.visual
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        out = tiny_vit.dense.forward_dense(x, ViTPolicy(pos_embed="timm"))
        pos = interpolate_pos_embed(visual.positional_embedding, (4, 4), (5, 7), "timm")
        ref = reference_tokens(visual, x, pos)
    assert out.grid == (5, 7)
    torch.testing.assert_close(out.tokens, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["dino", "timm", "bilinear", "bicubic_corners"])
def test_interpolation_is_identity_at_native_grid(mode: str) -> None:
    pe = torch.randn(1 + 14 * 14, 16)
    assert torch.equal(interpolate_pos_embed(pe, (14, 14), (14, 14), mode), pe)


def test_interpolation_variants_follow_spec() -> None:
    pe = torch.randn(1 + 14 * 14, 8)
    grid = pe[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    dino = F.interpolate(grid, scale_factor=(21.1 / 14, 28.1 / 14), mode="bicubic", align_corners=False)
    timm = F.interpolate(grid, size=(21, 28), mode="bicubic", antialias=True, align_corners=False)
    for mode, expected in (("dino", dino), ("timm", timm)):
        out = interpolate_pos_embed(pe, (14, 14), (21, 28), mode)
        assert out.shape == (1 + 21 * 28, 8)
        torch.testing.assert_close(out[0], pe[0])
        torch.testing.assert_close(out[1:], expected.permute(0, 2, 3, 1).reshape(-1, 8))
    # the variants really differ (spec §1.1: enough to move logits)
    assert (interpolate_pos_embed(pe, (14, 14), (21, 28), "dino")
            - interpolate_pos_embed(pe, (14, 14), (21, 28), "timm")).abs().max() > 1e-3


def test_pos_cache_never_mutates_and_follows_parameter_updates(tiny_vit) -> None:
    dense = tiny_vit.dense
    pe = dense.visual.positional_embedding
    before = pe.detach().clone()
    with torch.no_grad():
        first = dense.positional_embedding((5, 7), "dino")
        assert dense.positional_embedding((5, 7), "dino") is first  # cached
        assert torch.equal(pe, before)
        pe.add_(1.0)  # simulate an optimiser step
        updated = dense.positional_embedding((5, 7), "dino")
        pe.sub_(1.0)
    assert updated is not first
    torch.testing.assert_close(updated, first + 1.0, atol=1e-5, rtol=0)


def test_last_block_override_matches_reference(tiny_vit) -> None:
    """An override that replaces the last attention by q-q + k-k (SCLIP eq. 3) equals the hand computation."""

    def csa(inputs):
        q, k, v, s = inputs.q, inputs.k, inputs.v, inputs.scale
        return (torch.softmax(q @ q.transpose(-1, -2) * s, -1) + torch.softmax(k @ k.transpose(-1, -2) * s, -1)) @ v

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = tiny_vit.dense.forward_dense(x, ViTPolicy(overrides={-1: BlockOverride(attention=csa)}))
        ref = reference_tokens(
            tiny_vit.model.visual, x, tiny_vit.model.visual.positional_embedding,
            last_block_attention=lambda q, k, v, s: (torch.softmax(q @ q.transpose(-1, -2) * s, -1)
                                                     + torch.softmax(k @ k.transpose(-1, -2) * s, -1)) @ v,
        )
    torch.testing.assert_close(out.tokens, ref, atol=1e-5, rtol=0)


def test_parallel_pathway_with_pretrained_attention_and_no_ffn(tiny_vit) -> None:
    """A parallel path over the last 2 blocks: x_p = x_in + sum of out_proj(attn(ln_1(x_ori))) (GEM §3.1)."""
    dense = tiny_vit.dense
    x = torch.randn(1, 3, 32, 32)
    policy = ViTPolicy(parallel=ParallelPathway(depth=2, attention=softmax_attention, return_original=True))
    with torch.no_grad():
        out = dense.forward_dense(x, policy)
        stream, grid = dense.embed(x)
        stream, _ = dense.run_block(0, stream, grid)
        path = stream
        for i in (1, 2):
            inputs = dense.attention_inputs(i, stream, grid)
            path = path + dense.project_heads(i, softmax_attention(inputs))
            stream, _ = dense.run_block(i, stream, grid)
    torch.testing.assert_close(out.tokens, dense.head(path), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.original, dense.forward_dense(x).tokens, atol=1e-6, rtol=0)


def test_parallel_pathway_skips_the_unused_end_of_the_original_stream(tiny_vit) -> None:
    """Without a consumer of the original stream, its last block stops at q, k, v: same path, no last FFN."""
    dense = tiny_vit.dense
    x = torch.randn(2, 3, 32, 32)
    calls: list[int] = []
    handles = [block.ln_2.register_forward_hook(lambda m, i, o, b=b: calls.append(b))  # the FFN's input
               for b, block in enumerate(dense.blocks)]
    with torch.no_grad():
        full = dense.forward_dense(x, ViTPolicy(parallel=ParallelPathway(2, softmax_attention, return_original=True)))
        assert calls == [0, 1, 2]
        calls.clear()
        lean = dense.forward_dense(x, ViTPolicy(parallel=ParallelPathway(2, softmax_attention)))
        assert calls == [0, 1] and lean.original is None
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(lean.tokens, full.tokens, atol=0, rtol=0)


def test_override_without_residual_and_ffn(tiny_vit) -> None:
    dense = tiny_vit.dense
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = dense.forward_dense(x, ViTPolicy(overrides={2: BlockOverride(residual=False, ffn=False)}))
        stream, grid = dense.embed(x)
        for i in (0, 1):
            stream, _ = dense.run_block(i, stream, grid)
        o = dense.project_heads(2, softmax_attention(dense.attention_inputs(2, stream, grid)))
    torch.testing.assert_close(out.tokens, dense.head(o), atol=1e-6, rtol=0)


def test_extra_tokens_with_blocking_bias_leave_image_tokens_unchanged(tiny_vit) -> None:
    """MaskCLIP++ §3.3: with -inf bias from image rows to extra tokens, CLS/patch outputs are unchanged."""
    dense = tiny_vit.dense
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stream, grid = dense.embed(x)
        stream, _ = dense.run_block(0, stream, grid)
        extra = stream[:, :1].repeat(1, 2, 1)
        seq = torch.cat([extra, stream], dim=1)  # [B, 2 + 1 + N, C]
        s = seq.shape[1]
        bias = torch.zeros(1, dense.num_heads, s, s)
        bias[:, :, 2:, :2] = float("-inf")
        out = dense.run_blocks(seq, grid, start=1, num_prefix=3, attn_bias=bias)
        plain = dense.run_blocks(stream, grid, start=1)
    torch.testing.assert_close(out[:, 2:], plain, atol=1e-5, rtol=0)


def test_bad_override_index(tiny_vit) -> None:
    with pytest.raises(IndexError, match="out of range"):
        tiny_vit.dense.forward_dense(torch.randn(1, 3, 32, 32), ViTPolicy(overrides={7: BlockOverride()}))


def test_tiny_config_name() -> None:
    assert create_clip(TINY_VIT).architecture == "vit"

"""Mask-embedding extraction of every architecture against an independent per-mask computation (spec §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import create_clip
from ovs.methods.maskclippp.encoders import (
    MaskBatch,
    binarize_masks,
    build_mask_encoder,
    downsample_masks,
    group_by_image,
    mask_token_sequence_bias,
)
from tests.conftest import TINY_CONVNEXT, TINY_RESNET, TINY_VIT
from tests.methods.maskclippp.conftest import TINY_EVA

OUTSIDE = -100.0


def random_batch(size: int, counts: list[int], seed: int = 0) -> MaskBatch:
    """Images ``[B, 3, size, size]`` and random blob masks, ``counts[b]`` masks for image b (one mask is empty)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(counts), 3, size, size, generator=g)
    low = torch.rand(sum(counts), 1, 4, 4, generator=g)
    masks = (F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0.55).float()
    masks[1] = 0.0  # vanishes everywhere
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return MaskBatch(images, masks, image_index, torch.tensor([[size, size]] * len(counts)))


def perturb_(clip) -> None:
    """Move the random CLIP away from its init so that attention is not near-uniform."""
    with torch.no_grad():
        for p in clip.model.visual.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def test_downsample_and_grouping_helpers() -> None:
    masks = torch.zeros(3, 64, 64)
    masks[0, :32] = 1
    masks[2] = 1
    down = downsample_masks(masks, (2, 2))
    torch.testing.assert_close(down[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(downsample_masks(masks, (2, 2), "area")[2], torch.ones(2, 2))
    padded, slot = group_by_image(down.flatten(1), torch.tensor([0, 1, 1]), 3)
    assert padded.shape == (3, 2, 4) and slot.tolist() == [0, 0, 1]
    torch.testing.assert_close(padded[1, 1], down[2].flatten())
    assert padded[2].abs().sum() == 0 and padded[0, 1].abs().sum() == 0
    soft = torch.tensor([[0.2, 0.5, 0.9, 0.0]])
    assert binarize_masks(soft).tolist() == [[False, True, True, False]]  # tau = 0.45
    assert binarize_masks(soft, 0.1).tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("masks_first", [True, False])
def test_sequence_bias_blocks(masks_first: bool) -> None:
    b, h, q, p = 2, 3, 2, 4
    patch_bias = torch.randn(b, h, q, p)
    bias = mask_token_sequence_bias(patch_bias, masks_first)
    s = q + 1 + p
    assert bias.shape == (b, h, s, s)
    masks = list(range(q)) if masks_first else list(range(1 + p, s))
    cls = q if masks_first else 0
    patches = [i for i in range(s) if i not in masks and i != cls]
    image = [cls, *patches]
    neg_inf = float("-inf")
    for i in masks:
        assert torch.all(bias[:, :, i, masks] == neg_inf) and torch.all(bias[:, :, i, cls] == neg_inf)
        torch.testing.assert_close(bias[:, :, i, patches], patch_bias[:, :, masks.index(i)])
    for i in image:
        assert torch.all(bias[:, :, i, masks] == neg_inf)
        assert torch.all(bias[:, :, i][:, :, image] == 0)


def test_convnext_pooling_matches_per_mask_computation() -> None:
    clip = create_clip(TINY_CONVNEXT)
    perturb_(clip)
    encoder = build_mask_encoder(clip)
    batch = random_batch(96, [2, 3])
    with torch.no_grad():
        out = encoder(batch, dense=True)
        trunk = clip.model.visual.trunk
        feats = trunk.forward_features(batch.images)  # [B, C, 3, 3]
        norm = trunk.head.norm
        expected = []
        for mask, b in zip(batch.masks, batch.image_index.tolist()):
            small = F.interpolate(mask[None, None], size=feats.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            pooled = (feats[b] * small).sum(dim=(1, 2)) / (small.sum() + 1e-6)
            normed = F.layer_norm(pooled, pooled.shape, norm.weight, norm.bias, norm.eps)
            expected.append(clip.model.visual.head(normed))
        dense = torch.stack([
            clip.model.visual.head(F.layer_norm(feats[b, :, i, j], (feats.shape[1],), norm.weight, norm.bias, norm.eps))
            for b in range(2) for i in range(3) for j in range(3)
        ]).view(2, 3, 3, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.embeddings, torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.dense, dense, atol=1e-5, rtol=1e-5)
    assert out.areas[1] == 0 and torch.all(out.areas[[0, 2, 3, 4]] > 0)
    assert out.dense_valid is not None and out.dense_valid.all()


def test_convnext_full_mask_is_the_clip_image_embedding() -> None:
    clip = create_clip(TINY_CONVNEXT)
    perturb_(clip)
    images = torch.randn(2, 3, 64, 64)
    batch = MaskBatch(images, torch.ones(2, 64, 64), torch.tensor([0, 1]), torch.tensor([[64, 64], [64, 64]]))
    with torch.no_grad():
        out = build_mask_encoder(clip)(batch)
        torch.testing.assert_close(out.embeddings, clip.model.encode_image(images), atol=1e-5, rtol=1e-5)


def reference_vit_mask_tokens(clip, images: torch.Tensor, batch: MaskBatch, depth: int, log_alpha: torch.Tensor):
    """Decomposed computation: image tokens run the plain pretrained blocks; each mask token, started from its image's
    CLS at the neck input, attends to that block's patch keys/values only with α·M̃ / −100 (paper eq. 2)."""
    visual = clip.model.visual
    p = visual.patch_size[0]
    b, _, height, width = images.shape
    grid = (height // p, width // p)
    x = F.conv2d(images, visual.conv1.weight, stride=p).flatten(2).transpose(1, 2)
    side = visual.grid_size[0]
    pos = visual.positional_embedding
    patch_pos = F.interpolate(pos[1:].T.reshape(1, -1, side, side), size=grid, mode="bicubic", align_corners=True)
    pos = torch.cat([pos[:1], patch_pos.reshape(pos.shape[1], -1).T])
    x = visual.ln_pre(torch.cat([visual.class_embedding.expand(b, 1, -1), x], dim=1) + pos)
    blocks = visual.transformer.resblocks
    start = len(blocks) - depth
    small = F.interpolate(batch.masks[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0].flatten(1)
    tokens: list[torch.Tensor] = []
    for i, blk in enumerate(blocks):
        if i == start:
            tokens = [x[n, 0] for n in batch.image_index.tolist()]
        if i >= start:
            heads = blk.attn.num_heads
            alpha = log_alpha[i - start].exp()
            for n, image in enumerate(batch.image_index.tolist()):
                m = small[n]
                inside = m > m.max() / 2
                t = tokens[n]
                qkv_t = blk.ln_1(t) @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
                qkv_p = blk.ln_1(x[image, 1:]) @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias
                q = qkv_t.chunk(3)[0].view(heads, -1)  # [H, d]
                k, v = (t_.view(-1, heads, q.shape[-1]).transpose(0, 1) for t_ in qkv_p.chunk(3, dim=-1)[1:])
                logits = (k @ q[:, :, None])[..., 0] / math.sqrt(q.shape[-1])  # [H, P]
                logits = logits + torch.where(inside, alpha[:, None] * m, torch.tensor(OUTSIDE))
                o = (torch.softmax(logits, dim=-1)[:, None] @ v)[:, 0].reshape(-1)  # [C]
                t = t + blk.attn.out_proj(o)
                tokens[n] = t + blk.mlp(blk.ln_2(t))
        x = blk(x)
    return torch.stack([visual.ln_post(t) @ visual.proj for t in tokens])


@pytest.mark.parametrize("depth", [1, 2])
def test_vit_mask_tokens_match_decomposed_computation(depth: int) -> None:
    clip = create_clip(TINY_VIT)
    perturb_(clip)
    encoder = build_mask_encoder(clip, depth=depth)
    with torch.no_grad():
        encoder.mask_logit_scale.copy_(torch.randn_like(encoder.mask_logit_scale))  # distinct α per layer / head
        batch = random_batch(48, [3, 1, 2])  # 6 x 6 grid: interpolated positions
        out = encoder(batch)
        expected = reference_vit_mask_tokens(clip, batch.images, batch, depth, encoder.mask_logit_scale)
    assert out.embeddings.shape == (6, 32)
    torch.testing.assert_close(out.embeddings, expected, atol=2e-5, rtol=1e-5)


def test_vit_mask_token_gradient_reaches_alpha_and_attention() -> None:
    clip = create_clip(TINY_VIT)
    encoder = build_mask_encoder(clip)
    encoder(random_batch(32, [2, 2])).embeddings.sum().backward()
    assert encoder.mask_logit_scale.grad is not None and encoder.mask_logit_scale.grad.abs().sum() > 0
    assert clip.model.visual.transformer.resblocks[-1].attn.in_proj_weight.grad is not None


def test_eva_mask_tokens_per_mask_sequence_and_batch_invariance() -> None:
    """Q1/Q2 fixes: a mask's embedding does not depend on the other images or on how many masks they have, and
    equals a single-mask run of the pretrained blocks on ``[CLS | patches | token]`` with an explicitly built bias."""
    clip = create_clip(TINY_EVA)
    perturb_(clip)
    encoder = build_mask_encoder(clip, depth=2)
    eva = clip.dense
    with torch.no_grad():
        encoder.mask_logit_scale.copy_(torch.randn_like(encoder.mask_logit_scale))
        batch = random_batch(48, [1, 3, 2])
        out = encoder(batch)
        for image in range(3):
            rows = (batch.image_index == image).nonzero()[:, 0]
            alone = MaskBatch(batch.images[image : image + 1], batch.masks[rows],
                              torch.zeros(len(rows), dtype=torch.long), batch.sizes[image : image + 1])
            torch.testing.assert_close(encoder(alone).embeddings, out.embeddings[rows], atol=1e-5, rtol=1e-5)
        # explicit single-mask sequence for mask 2 (image 1)
        x, grid = eva.embed(batch.images[1:2])
        p = grid[0] * grid[1]
        rope = eva.rope(grid)
        for i in range(1):
            x = eva.run_block(i, x, rope)
        x = torch.cat([x, x[:, :1]], dim=1)  # [CLS | patches | token]
        small = F.interpolate(batch.masks[2][None, None], size=grid, mode="bilinear", align_corners=False).flatten()
        sin, cos = rope.chunk(2, dim=-1)
        rope_ext = torch.cat([rope, torch.cat([torch.zeros(1, sin.shape[1]), torch.ones(1, cos.shape[1])], dim=1)])
        for layer, i in enumerate(range(1, 3)):
            alpha = encoder.mask_logit_scale[layer].exp()
            bias = torch.zeros(1, eva.num_heads, p + 2, p + 2)
            bias[:, :, : p + 1, p + 1] = float("-inf")
            bias[:, :, p + 1, 0] = float("-inf")
            bias[:, :, p + 1, p + 1] = float("-inf")
            for h in range(eva.num_heads):
                for j in range(p):
                    inside = small[j] > small.max() / 2
                    bias[0, h, p + 1, 1 + j] = alpha[h] * small[j] if inside else OUTSIDE
            x = eva.blocks[i](x, rope=rope_ext, attn_mask=bias)
        expected = eva.head(x[:, -1])[0]
    torch.testing.assert_close(out.embeddings[2], expected, atol=1e-5, rtol=1e-5)


def test_resnet_mask_attention_pool_matches_per_mask_attention() -> None:
    clip = create_clip(TINY_RESNET)
    perturb_(clip)
    encoder = build_mask_encoder(clip)
    pool = clip.model.visual.attnpool
    with torch.no_grad():
        encoder.mask_logit_scale.copy_(torch.randn_like(encoder.mask_logit_scale))
        batch = random_batch(96, [2, 3])
        out = encoder(batch, dense=True)
        feats = clip.dense.features(batch.images)  # [B, C, 3, 3]
        b, c, h, w = feats.shape
        spatial = feats.flatten(2).transpose(1, 2)  # [B, 9, C]
        side = int(math.isqrt(pool.positional_embedding.shape[0] - 1))
        pos = pool.positional_embedding
        patch_pos = F.interpolate(pos[1:].T.reshape(1, c, side, side), size=(h, w), mode="bicubic", align_corners=True)
        keys = spatial + patch_pos.reshape(c, -1).T
        query = spatial.mean(dim=1) + pos[0]  # [B, C]
        heads = pool.num_heads
        alpha = encoder.mask_logit_scale.exp()
        small = F.interpolate(batch.masks[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0].flatten(1)
        expected = []
        for n, image in enumerate(batch.image_index.tolist()):
            q = pool.q_proj(query[image]).view(heads, -1)
            k = pool.k_proj(keys[image]).view(-1, heads, q.shape[-1]).transpose(0, 1)
            v = pool.v_proj(keys[image]).view(-1, heads, q.shape[-1]).transpose(0, 1)
            m = small[n]
            bias = torch.where(m > m.max() / 2, alpha[:, None] * m, torch.tensor(OUTSIDE))  # [H, P]
            attn = torch.softmax((k @ q[:, :, None])[..., 0] / math.sqrt(q.shape[-1]) + bias, dim=-1)
            expected.append(pool.c_proj((attn[:, None] @ v)[:, 0].reshape(-1)))
        dense = pool.c_proj(pool.v_proj(keys)).transpose(1, 2).reshape(b, -1, h, w)
    torch.testing.assert_close(out.embeddings, torch.stack(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.dense, dense, atol=1e-5, rtol=1e-5)


def test_mask_batch_validation() -> None:
    with pytest.raises(ValueError, match="non-decreasing"):
        MaskBatch(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8), torch.tensor([1, 0]), torch.full((2, 2), 8))
    with pytest.raises(ValueError, match="same size"):
        MaskBatch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 4), torch.tensor([0]), torch.full((1, 2), 8))

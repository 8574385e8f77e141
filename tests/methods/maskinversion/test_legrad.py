"""LeGrad map of the last block against an independent autograd computation (maskinversion spec §1.2, §12.1-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovs.backbones import CLIP
from ovs.methods.maskinversion.legrad import (
    encode_last_block,
    finish_last_block,
    last_block_attention,
    legrad_maps,
    scores_to_map,
)


def _normalised(clip: CLIP, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return clip.normalize(torch.randint(0, 256, (1, 3, *size), generator=g).float())


def test_hand_written_last_block_equals_the_module_forward(tiny_vit: CLIP) -> None:
    vit = tiny_vit.dense
    x = torch.randn(2, 17, vit.width)
    attn, values = last_block_attention(vit, x, (4, 4))
    assert torch.allclose(attn.sum(-1), torch.ones(2, vit.num_heads, 17), atol=1e-6)
    with torch.no_grad():
        expected = vit.blocks[-1](x)
        ours = finish_last_block(vit, x, attn @ values)
    assert (ours - expected).abs().max() < 1e-5


def test_global_embedding_is_the_models_image_embedding(tiny_vit: CLIP) -> None:
    images = _normalised(tiny_vit, (32, 32))
    state = encode_last_block(tiny_vit.dense, images)
    with torch.no_grad():
        expected = tiny_vit.model.encode_image(images)
    assert torch.allclose(state.global_embedding, expected, atol=1e-5)


def _reference_maps(clip: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Written from the LeGrad recipe with open_clip's own modules: trunk via the model's forward (hook on the last
    block's input), attention from in_proj, one gradient per token, ReLU, head / query mean, patch columns, bilinear
    resize to the input, min-max."""
    visual = clip.model.visual
    block = visual.transformer.resblocks[-1]
    captured = {}
    handle = block.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0].detach()))
    with torch.no_grad():
        visual(images)
    handle.remove()
    x = captured["x"][0]  # [N, C]
    n, width = x.shape
    heads = block.attn.num_heads
    qkv = block.ln_1(x) @ block.attn.in_proj_weight.T + block.attn.in_proj_bias
    q, k, v = (t.reshape(n, heads, -1).permute(1, 0, 2) for t in qkv.chunk(3, dim=-1))  # [H, N, c]
    side = int(round((n - 1) ** 0.5))
    maps = []
    for token in tokens:
        attn = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1).detach().requires_grad_(True)
        out = (attn @ v).permute(1, 0, 2).reshape(n, width)
        y = x + block.attn.out_proj(out)
        z = y + block.mlp(block.ln_2(y))
        feature = F.normalize(visual.ln_post(z.mean(0)) @ visual.proj, dim=-1)
        (grad,) = torch.autograd.grad(F.normalize(token, dim=-1) @ feature, attn)
        column = grad.clamp(min=0).mean(0).mean(0)[1:].reshape(1, 1, side, side)
        up = F.interpolate(column, size=images.shape[-2:], mode="bilinear")[0, 0]
        maps.append((up - up.min()) / (up.max() - up.min()))
    return torch.stack(maps)


def test_legrad_map_matches_an_independent_per_token_computation(tiny_vit: CLIP) -> None:
    images = _normalised(tiny_vit, (32, 32), seed=1)
    tokens = torch.randn(3, tiny_vit.embed_dim)
    maps = legrad_maps(tiny_vit.dense, images, tokens)
    expected = _reference_maps(tiny_vit, images, tokens)
    assert maps.shape == (3, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps - expected).abs().max() < 1e-5
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)  # the map depends on the token


def test_cls_column_is_dropped_and_non_square_grids_are_row_major() -> None:
    scores = torch.tensor([[100.0, 0, 1, 2, 3, 4, 5]])  # CLS column first; a CLS value would dominate the min-max
    grid_map = scores_to_map(scores, (2, 3), (1, 1))
    assert torch.allclose(grid_map[0], torch.tensor([[0.0, 1, 2], [3, 4, 5]]) / 5)
    upsampled = scores_to_map(scores, (2, 3), (2, 4))
    assert upsampled.shape == (1, 4, 12)
    # patch centres of a bilinear x2 / x4 upsampling lie between pixels; the corner pixels equal the corner patches
    assert upsampled[0, 0, 0] == 0 and upsampled[0, -1, -1] == 1


def test_constant_map_is_zero_instead_of_nan() -> None:
    flat = scores_to_map(torch.full((2, 5), 0.25), (2, 2), (8, 8))
    assert torch.equal(flat, torch.zeros(2, 16, 16))

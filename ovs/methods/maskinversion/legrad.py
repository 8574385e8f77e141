"""LeGrad explainability map of a CLIP ViT's last block (maskinversion spec §1.2, LeGrad eq. 1).

The vision tower runs through :class:`ovs.backbones.CLIPViT` (batch-first, open_clip 3.x): blocks ``0..L-2`` once per
image without gradients, then the last block by hand so that its post-softmax attention ``A``, the per-head values
``V`` and the attention output ``O = A V`` are available (spec §7). Positional embeddings come from the backbone's
cache of resampled variants (``timm`` mode = LeGrad's bicubic with antialias, spec §6), so the wrapped model is never
modified and any input size or aspect ratio runs in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor

from ovs.backbones import CLIPViT
from ovs.backbones.ops import apply_module

POS_EMBED_MODE = "timm"
"""LeGrad's ``resample_abs_pos_embed``: bicubic with antialias (spec §6)."""


def check_supported(vit: CLIPViT) -> None:
    """Refuse towers MaskInversion is not defined for (spec §7): token pooling and a projection are required."""
    visual: VisionTransformer = vit.visual
    if getattr(visual, "pool_type", "tok") != "tok":
        raise NotImplementedError(
            f"MaskInversion needs a CLS-pooled ViT (pool_type 'tok'); this tower pools with {visual.pool_type!r}."
        )
    if visual.proj is None:
        raise NotImplementedError("MaskInversion needs the ViT's output projection `proj` (joint embedding space).")


@dataclass
class LastBlockState:
    """One image's frozen activations around the last block (spec §5.3).

    Attributes:
        x: input of the last block, ``[1, N, C]`` (N = 1 + g_h * g_w).
        attn: post-softmax attention of the last block, ``[1, H, N, N]``.
        values: per-head values of the last block, ``[1, H, N, c]``.
        grid: patch grid ``(g_h, g_w)``.
        patch: patch size ``(p_h, p_w)``.
        global_embedding: unnormalised projected CLS output ``g`` (the ``encode_image`` output), ``[1, d]``.
    """

    x: Tensor
    attn: Tensor
    values: Tensor
    grid: tuple[int, int]
    patch: tuple[int, int]
    global_embedding: Tensor

    @property
    def num_tokens(self) -> int:
        return self.x.shape[1]


def last_block_attention(vit: CLIPViT, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Post-softmax attention ``[B, H, N, N]`` (rows = queries) and values ``[B, H, N, c]`` of the last block."""
    inputs = vit.attention_inputs(vit.num_blocks - 1, x, grid)
    logits = (inputs.q * inputs.scale) @ inputs.k.transpose(-1, -2)  # [B, H, N, N]
    return logits.softmax(dim=-1), inputs.v


def finish_last_block(vit: CLIPViT, x: Tensor, heads_out: Tensor) -> Tensor:
    """Rest of the last block from its attention output ``O = A V`` ``[B, H, N, c]``: ``z = y + LS2(MLP(LN2(y)))``,
    ``y = x + LS1(W_o concat_h O)`` (spec §1.2); returns ``[B, N, C]``."""
    block = vit.blocks[vit.num_blocks - 1]
    y = x + vit.project_heads(vit.num_blocks - 1, heads_out)
    return y + block.ls_2(apply_module(block.mlp, block.ln_2(y)))


def activation_embedding(vit: CLIPViT, tokens: Tensor) -> Tensor:
    """LeGrad's activation ``f̂ = normalize(LN_post(mean_i z_i) · proj)`` over all N tokens, CLS included (spec §2):
    ``[B, N, C] -> [B, d]``."""
    pooled = vit.visual.ln_post(tokens.mean(dim=1))  # [B, C]
    return F.normalize(pooled @ vit.visual.proj, dim=-1)


def global_embedding(vit: CLIPViT, tokens: Tensor) -> Tensor:
    """The unnormalised CLIP image embedding ``LN_post(z_CLS) · proj`` (spec §2): ``[B, N, C] -> [B, d]``."""
    return vit.visual.ln_post(tokens[:, 0]) @ vit.visual.proj


def encode_last_block(vit: CLIPViT, images: Tensor) -> LastBlockState:
    """Run one normalised image ``[1, 3, H, W]`` up to the last block and through it, without gradients."""
    check_supported(vit)
    if images.shape[0] != 1:
        raise ValueError(f"encode_last_block takes one image [1, 3, H, W], got {tuple(images.shape)}.")
    with torch.no_grad():
        x, grid = vit.embed(images, POS_EMBED_MODE)
        for i in range(vit.num_blocks - 1):
            x, _ = vit.run_block(i, x, grid)
        attn, values = last_block_attention(vit, x, grid)
        tokens = finish_last_block(vit, x, attn @ values)
        g = global_embedding(vit, tokens)
    return LastBlockState(x=x, attn=attn, values=values, grid=grid, patch=vit.patch_size, global_embedding=g)


def column_scores(attn_grad: Tensor) -> Tensor:
    """LeGrad steps 3-4: ReLU, mean over heads, then over all query rows (CLS row included):
    ``[M, H, N, N] -> [M, N]`` (one value per key column)."""
    return attn_grad.clamp(min=0).mean(dim=1).mean(dim=1)


def scores_to_map(scores: Tensor, grid: tuple[int, int], patch: tuple[int, int]) -> Tensor:
    """LeGrad steps 5-9: drop the CLS column, reshape row-major to the grid, upsample bilinearly by the patch size and
    min-max normalise each map (spec §1.2): ``[M, N] -> [M, g_h * p_h, g_w * p_w]`` in ``[0, 1]``.

    As the reference, there is no epsilon; a constant map (where the reference divides 0 by 0) is 0 instead of NaN.
    """
    m = scores.shape[0]
    grid_map = scores[:, 1:].reshape(m, 1, grid[0], grid[1])  # [M, 1, g_h, g_w]
    up = F.interpolate(grid_map, scale_factor=patch, mode="bilinear", align_corners=False)[:, 0]  # [M, S_h, S_w]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    return (up - low) / torch.where(span > 0, span, torch.ones_like(span))


def legrad_maps(vit: CLIPViT, images: Tensor, tokens: Tensor) -> Tensor:
    """LeGrad map of each token for one normalised image ``[1, 3, H, W]`` and tokens ``[M, d]`` (raw, normalised
    here), by plain autograd on the image repeated once per token (the reference computation, spec §1.2):
    ``[M, g_h * p_h, g_w * p_w]``."""
    state = encode_last_block(vit, images)
    m = tokens.shape[0]
    with torch.enable_grad():
        attn = state.attn.expand(m, -1, -1, -1).detach().clone().requires_grad_(True)  # [M, H, N, N]
        out = finish_last_block(vit, state.x.expand(m, -1, -1), attn @ state.values)
        score = (F.normalize(tokens.detach(), dim=-1) * activation_embedding(vit, out)).sum()
        (grad,) = torch.autograd.grad(score, attn)
    return scores_to_map(column_scores(grad), state.grid, state.patch)

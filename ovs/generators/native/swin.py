"""Swin Transformer backbone of Mask2Former Swin-T / Swin-L (maskclippp.md §8.2 step 2, §8.6 rows m2f-swin-t /
m2f-swin-l: maskformer2's ``D2SwinTransformer``; Liu et al. 2021, "Swin Transformer", §3.1-3.2).

As the released configs (``APE False``, ``PATCH_NORM True``, ``QKV_BIAS True``, ``MLP_RATIO 4``, no dropout): a 4 x 4
patch embedding + LayerNorm, four stages of (shifted-)window attention blocks with a relative position bias (Swin eq. 4)
joined by patch merging, and one LayerNorm per output. Outputs ``res2`` .. ``res5`` at strides 4 / 8 / 16 / 32 with
``C, 2C, 4C, 8C`` channels. Any input size works as in the reference: the image is zero-padded to a multiple of the
patch size, each block zero-pads its (normalised) tokens to a multiple of the window (padded tokens take part in the
attention, unmasked, as in the reference), patch merging zero-pads odd sizes. Shifted windows use the cyclic shift and
the additive ``-100`` region mask of the reference (Swin §3.2, "efficient batch computation"). All windows of all
images go through one batched attention per block (``scaled_dot_product_attention`` off the CPU). Module names
equal the reference's, so the released weights load through identity rules (:mod:`ovs.generators.native.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

SWIN_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
MASK_VALUE = -100.0
"""Additive attention mask between tokens of different regions of a shifted window (the reference's value)."""


def relative_position_index(window: int) -> Tensor:
    """``[N, N]`` (``N = window²``) row of the ``(2·window - 1)²``-entry bias table for each token pair (Swin eq. 4:
    ``B`` taken from ``B̂``): ``(Δy + window - 1) · (2·window - 1) + Δx + window - 1`` with ``Δ = p_i - p_j``."""
    grid = torch.arange(window)
    coords = torch.stack(torch.meshgrid(grid, grid, indexing="ij")).flatten(1)  # [2, N] (y, x), row-major
    delta = coords[:, :, None] - coords[:, None, :] + window - 1  # [2, N, N] in [0, 2·window - 2]
    return delta[0] * (2 * window - 1) + delta[1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C]`` (H, W multiples of ``window``) -> ``[B, nW, window², C]``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, window², C]`` -> ``[B, height, width, C]``."""
    b, _, _, c = windows.shape
    x = windows.view(b, height // window, width // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """``[nW, N, N]`` additive mask of the cyclically shifted windows of a ``height x width`` padded map: ``0`` between
    tokens of the same region, ``-100`` across regions (Swin §3.2). Rows and columns each split into three regions
    ``[0, size - window)``, ``[size - window, size - shift)``, ``[size - shift, size)``."""

    def regions(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window).long() + (index >= size - shift).long()  # [size] in {0, 1, 2}

    label = regions(height)[:, None] * 3 + regions(width)[None, :]  # [Hp, Wp]
    windows = window_partition(label[None, :, :, None], window)[0, :, :, 0]  # [nW, N]
    different = windows[:, :, None] != windows[:, None, :]  # [nW, N, N]
    return torch.where(different, MASK_VALUE, 0.0).float()


def window_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, fused: bool) -> Tensor:
    """``softmax(q kᵀ / √d + bias) v`` for ``q, k, v [..., N, d]`` and a ``bias`` broadcasting to ``[..., N, N]``.
    ``fused``: ``F.scaled_dot_product_attention`` (GPUs); otherwise two matmuls and a softmax: on CPU the fused op's
    masked-row checks (``all`` / ``where`` / ``fill_``) took about 1 s of a 14 s Swin-T forward (profiled at
    800 x 1088; docs/performance.md)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [..., N, N]
    return scores.add_(bias.to(q.dtype)).softmax(dim=-1) @ v


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window with a learned relative position bias (Swin eq. 4:
    ``softmax(QKᵀ/√d + B) V``), plus the shifted-window mask when given."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin width {dim} is not divisible by its {num_heads} heads.")
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x [B, nW, N, C]``, ``mask [nW, N, N]`` or ``None`` -> ``[B, nW, N, C]``."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).view(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)  # [3, B, nW, h, N, d]
        bias = self.relative_position_bias_table[self.relative_position_index].permute(2, 0, 1)  # [h, N, N]
        if mask is None:  # windows into the batch; the bias broadcasts over it
            q, k, v = qkv.reshape(3, b * nw, heads, n, c // heads).unbind(0)  # [B·nW, h, N, d]
        else:  # windows into the heads; the per-window mask broadcasts over the images
            q, k, v = qkv.reshape(3, b, nw * heads, n, c // heads).unbind(0)  # [B, nW·h, N, d]
            bias = (bias[None] + mask[:, None]).reshape(nw * heads, n, n)  # [nW·h, N, N]
        out = window_attention(q, k, v, bias, fused=not q.is_cpu)  # [B·nW, h, N, d] or [B, nW·h, N, d]
        out = out.view(b, nw, heads, n, c // heads).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class SwinMlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` (the reference's ``Mlp``, names kept for the weights)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm block: ``x + (S)W-MSA(LN(x))``, then ``x + MLP(LN(x))`` (Swin eq. 3), with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x [B, H, W, C]``; ``mask [nW, N, N]`` of the padded map (used by shifted blocks) -> ``[B, H, W, C]``."""
        _, height, width, _ = x.shape
        window, shift = self.window, self.shift
        y = F.pad(self.norm1(x), (0, 0, 0, (-width) % window, 0, (-height) % window))  # [B, Hp, Wp, C]
        padded_h, padded_w = y.shape[1:3]
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(window_partition(y, window), mask if shift else None)  # [B, nW, N, C]
        y = window_reverse(y, window, padded_h, padded_w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :height, :width])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2 x 2 neighbourhoods concatenated (order ``(0,0), (1,0), (0,1), (1,1)`` as ``(row, col)``), LayerNorm, then a
    linear ``4C -> 2C`` (Swin §3.1); odd sizes are zero-padded at the bottom / right."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, ceil(H/2), ceil(W/2), 2C]``."""
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular (even index) and shifted (odd, shift ``window // 2``) windows, then an
    optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_path: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.window, self.shift = window, window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio, drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``[B, H, W, C]`` -> (stage output ``[B, H, W, C]``, merged ``[B, ceil(H/2), ceil(W/2), 2C]`` or ``None``)."""
        height, width = x.shape[1:3]
        window = self.window
        mask = None
        if self.shift and len(self.blocks) > 1:
            padded = (-(-height // window) * window, -(-width // window) * window)
            mask = shifted_window_mask(*padded, window, self.shift, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x, None if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution + LayerNorm; the image is zero-padded to a patch multiple."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` -> ``[B, ceil(H/p), ceil(W/p), C]``."""
        p = self.patch_size
        images = F.pad(images, (0, (-images.shape[-1]) % p, 0, (-images.shape[-2]) % p))
        return self.norm(self.proj(images).permute(0, 2, 3, 1))


class SwinBackbone(nn.Module):
    """Swin Transformer returning ``{"res2": [B, C, H/4, W/4], ..., "res5": [B, 8C, H/32, W/32]}`` (maskformer2's
    ``D2SwinTransformer`` with ``APE False``).

    Args:
        embed_dim: width ``C`` of the first stage (doubles per stage).
        depths, num_heads: blocks and attention heads per stage.
        window_size: attention window (7 for Swin-T, 12 for Swin-L 384).
        mlp_ratio: MLP hidden width / block width.
        drop_path_rate: stochastic depth of the last block, linear from 0 over all blocks (training only; 0.3 in the
            released configs).
        patch_size: patch embedding stride.
    """

    out_strides = SWIN_STRIDES

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.3, patch_size: int = 4) -> None:
        super().__init__()
        if len(depths) != len(SWIN_STRIDES) or len(num_heads) != len(SWIN_STRIDES):
            raise ValueError(f"Swin needs {len(SWIN_STRIDES)} stages (res2..res5); got depths {list(depths)}, "
                             f"num_heads {list(num_heads)}.")
        widths = [embed_dim * 2**i for i in range(len(depths))]
        self.out_channels = dict(zip(SWIN_STRIDES, widths))
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(width, depth, heads, window_size, mlp_ratio, rates[start: start + depth],
                      downsample=i < len(depths) - 1)
            for i, (width, depth, heads, start) in enumerate(zip(widths, depths, num_heads, starts))
        )
        for i, width in enumerate(widths):
            self.add_module(f"norm{i}", nn.LayerNorm(width))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.patch_embed(images)  # [B, H/4, W/4, C]
        outputs: dict[str, Tensor] = {}
        for i, (name, layer) in enumerate(zip(SWIN_STRIDES, self.layers)):
            out, merged = layer(x)
            x = out if merged is None else merged
            outputs[name] = getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous()  # [B, C_i, H_i, W_i]
        return outputs


def swin_t() -> SwinBackbone:
    """Swin-T of ``maskformer2_swin_tiny_bs16_50ep`` (ImageNet-1k, pretrain size 224): C 96, depths 2-2-6-2, heads
    3-6-12-24, window 7."""
    return SwinBackbone(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)


def swin_l() -> SwinBackbone:
    """Swin-L of ``maskformer2_swin_large_IN21k_384_bs16_100ep`` (ImageNet-22k, pretrain size 384): C 192, depths
    2-2-18-2, heads 6-12-24-48, window 12."""
    return SwinBackbone(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)

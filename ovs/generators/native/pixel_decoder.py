"""Mask2Former's multi-scale deformable-attention pixel decoder (Mask2Former paper §3.2 / §4; maskclippp.md §8.2
step 3): ``res3..res5`` (strides 8 / 16 / 32) projected to ``conv_dim`` (1x1 conv + GroupNorm(32)), six deformable
encoder layers (FFN 1024, post-norm) over the three levels with sine positional encodings plus learned level
embeddings, then an FPN step to stride 4 (``res2`` lateral 1x1 conv + GN, upsampled coarser map, 3x3 conv + GN +
ReLU) and a 1x1 ``mask_features`` projection to ``mask_dim``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs.generators.native.deform_attn import MSDeformAttn


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine encoding: ``[B, 2 F, H, W]`` with ``F = num_pos_feats`` (y channels first)."""

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_pos_feats, self.temperature, self.scale = num_pos_feats, temperature, 2 * math.pi

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        ones = torch.ones(batch, height, width, dtype=torch.float32, device=x.device)
        y_embed, x_embed = ones.cumsum(1), ones.cumsum(2)
        y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * self.scale
        x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t  # [B, H, W, F]
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B, 2 F, H, W]


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN (dropout inactive at inference)."""

    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, reference_points: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class ConvNorm(nn.Sequential):
    """``Conv2d`` (no bias) + ``GroupNorm(32)`` (+ ReLU): detectron2's ``Conv2d(norm="GN")``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(32, out_channels),
        ]
        super().__init__(*layers, *([nn.ReLU()] if relu else []))


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder: backbone features -> ``(mask_features [B, mask_dim, H/4, W/4], multi_scale [3 maps
    [B, conv_dim, H/s, W/s], s = 32, 16, 8])``.

    Args:
        in_channels: channels of ``res2..res5``.
        strides: their strides (4 / 8 / 16 / 32).
        conv_dim: transformer / FPN width (256).
        mask_dim: per-pixel embedding width (256).
        enc_layers: deformable encoder layers (6).
        n_heads, n_points, ffn_dim, dropout: encoder hyper-parameters (8, 4, 1024, 0.0 at inference).
        transformer_in_features: the encoder's levels (``res3..res5``: strides 8 / 16 / 32).
        common_stride: output stride of ``mask_features`` (4).
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        strides: dict[str, int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        n_heads: int = 8,
        n_points: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5"),
        common_stride: int = 4,
    ) -> None:
        super().__init__()
        self.in_features = sorted(in_channels, key=lambda name: strides[name])  # fine -> coarse
        self.transformer_in_features = sorted(transformer_in_features, key=lambda name: strides[name])
        levels = len(self.transformer_in_features)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[name], conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for name in self.transformer_in_features[::-1]  # coarse -> fine
        )
        self.level_embed = nn.Parameter(torch.randn(levels, conv_dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(conv_dim, ffn_dim, levels, n_heads, n_points, dropout) for _ in range(enc_layers)
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        fpn_levels = int(math.log2(min(strides[n] for n in self.transformer_in_features)) - math.log2(common_stride))
        self.fpn_features = self.in_features[:fpn_levels][::-1]  # coarse -> fine (res2 for R50)
        self.lateral_convs = nn.ModuleList(ConvNorm(in_channels[n], conv_dim, 1, False) for n in self.fpn_features)
        self.output_convs = nn.ModuleList(ConvNorm(conv_dim, conv_dim, 3, True) for _ in self.fpn_features)
        self.num_multi_scale = 3

    @staticmethod
    def reference_points(shapes: list[tuple[int, int]], batch: int, device: torch.device) -> Tensor:
        """Pixel centres of every level, normalised: ``[B, S, L, 2]`` (unpadded inputs: valid ratio 1)."""
        points = []
        for height, width in shapes:
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=torch.float32, device=device) / height,
                torch.linspace(0.5, width - 0.5, width, dtype=torch.float32, device=device) / width,
                indexing="ij",
            )
            points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
        ref = torch.cat(points, 0)  # [S, 2]
        return ref[None, :, None, :].expand(batch, -1, len(shapes), -1)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        srcs, pos, shapes = [], [], []
        for level, name in enumerate(self.transformer_in_features[::-1]):  # coarse -> fine
            x = features[name].float()
            src = self.input_proj[level](x)  # [B, C, h, w]
            shapes.append((src.shape[-2], src.shape[-1]))
            srcs.append(src.flatten(2).transpose(1, 2))  # [B, h w, C]
            pos.append(self.pe_layer(x).flatten(2).transpose(1, 2) + self.level_embed[level][None, None])
        memory, pos_flat = torch.cat(srcs, 1), torch.cat(pos, 1)  # [B, S, C]
        reference = self.reference_points(shapes, memory.shape[0], memory.device)
        for layer in self.layers:
            memory = layer(memory, pos_flat, reference, shapes)
        maps = [
            level.transpose(1, 2).reshape(memory.shape[0], -1, h, w)
            for level, (h, w) in zip(memory.split([h * w for h, w in shapes], 1), shapes)
        ]
        for name, lateral, output in zip(self.fpn_features, self.lateral_convs, self.output_convs):
            lat = lateral(features[name].float())
            maps.append(output(lat + F.interpolate(maps[-1], size=lat.shape[-2:], mode="bilinear", align_corners=False)))
        return self.mask_features(maps[-1]), maps[: self.num_multi_scale]

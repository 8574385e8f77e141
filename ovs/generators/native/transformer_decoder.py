"""Mask2Former's masked-attention transformer decoder (Mask2Former paper §3.2 eq. 2-4; maskclippp.md §8.2 step 3).

``N`` learned queries (query features + positional query embeddings) attend, layer ``l``, to the pixel decoder's
level ``l mod 3`` (stride 32, 16, 8, ...) with cross-attention masked to the foreground of the previous layer's
prediction (``sigmoid(mask) < 0.5`` is masked out; a query whose mask is empty everywhere attends everywhere), then
self-attention, then an FFN (all post-norm). Before the first layer and after each layer a shared head predicts
class logits ``[B, N, K + 1]`` (linear, void last) and mask logits ``[B, N, H/4, W/4]`` (3-layer MLP embedding dot the
per-pixel mask features).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs.generators.native.pixel_decoder import PositionEmbeddingSine


class AttentionLayer(nn.Module):
    """Post-norm multi-head (cross- or self-) attention with a residual connection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                mask: Tensor | None = None) -> Tensor:
        out = self.attn(query + query_pos, memory + memory_pos, memory, attn_mask=mask, need_weights=False)[0]
        return self.norm(query + out)


class FFNLayer(nn.Module):
    """Post-norm ReLU feed-forward block."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedAttentionDecoder(nn.Module):
    """Masked-attention decoder.

    Args:
        in_channels: width of the pixel decoder's multi-scale maps (``conv_dim``).
        num_classes: K (the void column is added).
        hidden_dim, num_queries, nheads, dim_feedforward: 256, 100 (or 200), 8, 2048.
        dec_layers: decoder layers (9; detectron2's ``DEC_LAYERS`` counts the initial prediction: 10).
        mask_dim: width of the mask features (256).
        class_head: module mapping the normed queries ``[B, N, C]`` to class logits ``[B, N, K + 1]`` instead of the
            linear classifier (e.g. :class:`~ovs.generators.native.class_head.OpenVocabClassHead`, FC-CLIP / MAFT+).
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 133, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256,
                 class_head: nn.Module | None = None) -> None:
        super().__init__()
        self.num_heads, self.num_levels = nheads, 3
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.cross_attention = nn.ModuleList(AttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.self_attention = nn.ModuleList(AttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.ffn = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            nn.Conv2d(in_channels, hidden_dim, 1) if in_channels != hidden_dim else nn.Identity()
            for _ in range(self.num_levels)
        )
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1) if class_head is None else class_head
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        for module in (*self.cross_attention, *self.self_attention, *self.ffn):
            for parameter in module.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)

    def predict(self, output: Tensor, mask_features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """Heads on ``output`` ``[B, N, C]`` -> class ``[B, N, K + 1]``, masks ``[B, N, H4, W4]`` and the next
        attention mask ``[B * heads, N, h w]`` (True = not attended) at ``size``."""
        decoded = self.decoder_norm(output)
        logits = self.class_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        attn = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid().flatten(2) < 0.5
        attn = attn[:, None].expand(-1, self.num_heads, -1, -1).flatten(0, 1)  # [B heads, N, h w]
        return logits, masks, attn.detach()

    def forward(self, features: list[Tensor], mask_features: Tensor) -> dict[str, Tensor | list[dict[str, Tensor]]]:
        """``features``: 3 maps ``[B, C, h_l, w_l]`` (coarse -> fine); ``mask_features`` ``[B, mask_dim, H4, W4]``.
        Returns ``pred_logits``, ``pred_masks`` (last layer) and ``aux_outputs`` (the earlier predictions)."""
        sizes = [tuple(x.shape[-2:]) for x in features]
        pos = [self.pe_layer(x).flatten(2).transpose(1, 2) for x in features]  # [B, h w, C]
        src = [
            (proj(x).flatten(2) + self.level_embed.weight[i][None, :, None]).transpose(1, 2)
            for i, (proj, x) in enumerate(zip(self.input_proj, features))
        ]
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)  # [B, N, C]
        output = self.query_feat.weight[None].expand(batch, -1, -1)
        logits, masks, attn = self.predict(output, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i, (cross, self_attn, ffn) in enumerate(zip(self.cross_attention, self.self_attention, self.ffn)):
            level = i % self.num_levels
            attn = attn & ~attn.all(-1, keepdim=True)  # empty masks attend everywhere
            output = cross(output, query_pos, src[level], pos[level], attn)
            output = self_attn(output, query_pos, output, query_pos)
            output = ffn(output)
            logits, masks, attn = self.predict(output, mask_features, sizes[(i + 1) % self.num_levels])
            predictions.append((logits, masks))
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
        }

"""Dense views of open_clip's convolutional vision towers (MaskCLIP++ spec §3.2, §3.4).

* :class:`CLIPConvNeXt` — timm ConvNeXt trunk: the stride-32 stage-4 map, and the CLIP head (trunk LayerNorm, then
  the open_clip projection) applicable to any pooled vector or to every location.
* :class:`CLIPResNet` — open_clip ModifiedResNet: the stride-32 map and functional access to the attention pool, so
  callers can pool with their own queries and an additive attention bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from torch import Tensor, nn

from ovs.backbones.vit import interpolate_pos_embed


class CLIPConvNeXt(nn.Module):
    """Stage-4 features and the CLIP head of an open_clip ConvNeXt (timm) tower.

    Args:
        visual: the open_clip ``TimmModel`` (shared, never modified).
    """

    def __init__(self, visual: TimmModel) -> None:
        super().__init__()
        if not isinstance(visual, TimmModel) or not hasattr(visual.trunk, "stages"):
            raise TypeError(f"CLIPConvNeXt wraps an open_clip timm ConvNeXt tower, got {type(visual).__name__}.")
        if not isinstance(visual.trunk.norm_pre, nn.Identity):
            raise NotImplementedError("ConvNeXt towers with a pre-head norm (norm_pre) are not supported.")
        self.visual = visual

    @property
    def output_dim(self) -> int:
        head = self.visual.head
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        return last.out_features

    @property
    def feature_dim(self) -> int:
        return self.visual.trunk.num_features

    stride: int = 32

    def features(self, images: Tensor) -> Tensor:
        """Stage-4 map of normalised images: ``[B, 3, H, W] -> [B, C, H/32, W/32]``."""
        return self.visual.trunk.forward_features(images)

    def head(self, pooled: Tensor) -> Tensor:
        """CLIP head on pooled vectors ``[N, C] -> [N, D]``: trunk LayerNorm *after* pooling, then the projection."""
        norm = self.visual.trunk.head.norm
        x = F.layer_norm(pooled, (pooled.shape[-1],), norm.weight, norm.bias, norm.eps)
        return self.visual.head(x)

    def dense(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Stage-4 map and per-location embeddings ``p_embs`` (MaskCLIP++ spec §3.2): ``([B, C, h, w], [B, D, h, w])``."""
        feats = self.features(images)
        b, c, h, w = feats.shape
        tokens = self.head(feats.permute(0, 2, 3, 1).reshape(-1, c))  # [B*h*w, D]
        return feats, tokens.view(b, h, w, -1).permute(0, 3, 1, 2)


class CLIPResNet(nn.Module):
    """Stride-32 features and functional attention pooling of an open_clip ModifiedResNet.

    Args:
        visual: the open_clip ``ModifiedResNet`` (shared, never modified).
    """

    stride: int = 32

    def __init__(self, visual: ModifiedResNet) -> None:
        super().__init__()
        if not isinstance(visual, ModifiedResNet):
            raise TypeError(f"CLIPResNet wraps an open_clip ModifiedResNet, got {type(visual).__name__}.")
        self.visual = visual
        self.pool = visual.attnpool

    @property
    def output_dim(self) -> int:
        return self.pool.c_proj.out_features

    @property
    def num_heads(self) -> int:
        return self.pool.num_heads

    def features(self, images: Tensor) -> Tensor:
        """``layer4`` output of normalised images: ``[B, 3, H, W] -> [B, C, H/32, W/32]``."""
        v = self.visual
        x = v.stem(images.to(v.conv1.weight.dtype))
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    def tokens(self, features: Tensor) -> Tensor:
        """Attention-pool tokens ``[mean | spatial] + pos``: ``[B, C, h, w] -> [B, 1 + h*w, C]``.

        The positional embedding is resized bicubically with ``align_corners=True`` (MaskCLIP++ spec §3.4).
        """
        b, c, h, w = features.shape
        x = features.flatten(2).transpose(1, 2)  # [B, hw, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        side = int(round((self.pool.positional_embedding.shape[0] - 1) ** 0.5))
        pos = interpolate_pos_embed(self.pool.positional_embedding, (side, side), (h, w), "bicubic_corners")
        return x + pos.to(x.dtype)

    def attend(self, queries: Tensor, keys: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Multi-head attention pooling with the pool's weights (MaskCLIP++ eq. 2).

        Args:
            queries: ``[B, Q, C]`` query tokens.
            keys: ``[B, N, C]`` key/value tokens.
            attn_bias: optional additive bias ``[B, heads, Q, N]``.

        Returns:
            ``[B, Q, D]`` pooled embeddings after ``c_proj``.
        """
        p = self.pool
        heads = p.num_heads
        q = p.q_proj(queries).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, Q, d]
        k = p.k_proj(keys).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, H, N, d]
        v = p.v_proj(keys).unflatten(-1, (heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # [B, H, Q, d]
        return p.c_proj(out.transpose(1, 2).flatten(2))

    def pooled(self, images: Tensor) -> Tensor:
        """The CLIP image embedding (query = mean token over all tokens), ``[B, D]``."""
        tokens = self.tokens(self.features(images))
        return self.attend(tokens[:, :1], tokens)[:, 0]

    def dense(self, images: Tensor) -> Tensor:
        """Value-path dense embeddings (each spatial token attends only to itself): ``[B, D, h, w]``."""
        feats = self.features(images)
        b, _, h, w = feats.shape
        tokens = self.tokens(feats)[:, 1:]
        dense = self.pool.c_proj(self.pool.v_proj(tokens))  # [B, hw, D]
        return dense.transpose(1, 2).reshape(b, -1, h, w)

"""Dense, block-by-block view of open_clip's timm EVA / EVA02 vision towers (MaskCLIP++ spec §3.3).

open_clip builds ``EVA02-B-16`` / ``EVA02-L-14(-336)`` / ``EVA01-g-14(-plus)`` as a ``TimmModel`` around a timm
:class:`~timm.models.eva.Eva` trunk. Its blocks accept a rotary embedding and an additive attention mask as arguments,
so extra tokens with a bias (MaskCLIP++ mask tokens) run through the unmodified pretrained blocks. Tokens are laid
out ``[CLS | patches | extra]``: timm applies RoPE to every token after the CLS, so the extra tokens get the identity
rotation (sin 0, cos 1) and the patches keep their own positions whatever the number of extra tokens — the fix of
the reference's RoPE-on-padding problem (spec §11 quirk Q2). The wrapped model is never modified.
"""

from __future__ import annotations

import torch
from open_clip.timm_model import TimmModel
from torch import Tensor, nn

from ovs.backbones.vit import interpolate_pos_embed


def is_eva_tower(visual: nn.Module) -> bool:
    """True for an open_clip ``TimmModel`` whose trunk is a timm EVA."""
    if not isinstance(visual, TimmModel):
        return False
    from timm.models.eva import Eva

    return isinstance(visual.trunk, Eva)


class CLIPEva(nn.Module):
    """Patch embedding, per-block forward with RoPE and an attention bias, and the CLIP head of a timm EVA tower.

    Args:
        visual: the open_clip ``TimmModel`` with an EVA trunk (shared, never modified).
    """

    def __init__(self, visual: TimmModel) -> None:
        super().__init__()
        if not is_eva_tower(visual):
            raise TypeError(f"CLIPEva wraps an open_clip timm EVA tower, got {type(visual).__name__}.")
        from timm.layers.pos_embed_sincos import RotaryEmbeddingCat

        trunk = visual.trunk
        if trunk.cls_token is None or trunk.num_prefix_tokens != 1 or trunk.no_embed_class:
            raise NotImplementedError("Only EVA towers with one CLS token and a CLS position embedding are supported.")
        if trunk.rope is not None and not isinstance(trunk.rope, RotaryEmbeddingCat):
            raise NotImplementedError(f"Unsupported EVA rotary embedding {type(trunk.rope).__name__}.")
        if trunk.patch_drop is not None or trunk.attn_pool is not None:
            raise NotImplementedError("EVA towers with patch dropout or an attention pool are not supported.")
        self.visual = visual
        self.trunk = trunk

    @property
    def blocks(self) -> nn.Sequential:
        return self.trunk.blocks

    @property
    def num_blocks(self) -> int:
        return len(self.trunk.blocks)

    @property
    def num_heads(self) -> int:
        return self.trunk.blocks[0].attn.num_heads

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.patch_size)

    @property
    def output_dim(self) -> int:
        linears = [m for m in (*self.visual.head.modules(), self.trunk.head) if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else self.width

    def embed(self, images: Tensor, pos_embed: str = "bicubic_corners") -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding, CLS, interpolated absolute positions, ``norm_pre``: ``[B, 3, H, W] -> [B, 1 + N, C]``."""
        t = self.trunk
        x = t.patch_embed.proj(images.to(t.patch_embed.proj.weight.dtype))  # [B, C, g_h, g_w]
        grid = (x.shape[-2], x.shape[-1])
        x = t.patch_embed.norm(x.flatten(2).transpose(1, 2))  # [B, N, C]
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        src = tuple(t.patch_embed.grid_size)
        pos = interpolate_pos_embed(t.pos_embed[0], src, grid, pos_embed)  # [1 + N, C]
        return t.norm_pre(t.pos_drop(x + pos.to(x.dtype))), grid

    def rope(self, grid: tuple[int, int], num_extra: int = 0) -> Tensor | None:
        """Concatenated sin/cos rotary embedding ``[g_h * g_w + num_extra, 2 d]`` for ``[patches | extra]``.

        Patches get the trunk's RoPE recomputed for ``grid`` (coordinates rescaled to the pretraining grid, as
        EVA-CLIP does); the ``num_extra`` trailing tokens get the identity rotation. ``None`` when there is no RoPE.
        """
        rope = self.trunk.rope
        if rope is None:
            return None
        from timm.layers.pos_embed_sincos import build_rotary_pos_embed

        sin, cos = build_rotary_pos_embed(
            list(grid),
            bands=rope.bands,
            in_pixels=rope.in_pixels,
            ref_feat_shape=rope.ref_feat_shape,
            grid_offset=rope.grid_offset,
            grid_indexing=rope.grid_indexing,
            rotate_half=rope.rotate_half,
            grid_type=rope.grid_type,
            normalize_coords=rope.normalize_coords,
        )  # 2 x [N, d]
        identity = torch.cat([sin.new_zeros(num_extra, sin.shape[1]), sin.new_ones(num_extra, cos.shape[1])], dim=1)
        return torch.cat([torch.cat([sin, cos], dim=1), identity], dim=0)

    def run_block(self, block: int, x: Tensor, rope: Tensor | None, attn_bias: Tensor | None = None) -> Tensor:
        """The unmodified pretrained block ``block`` on ``[CLS | patches | extra]`` with an additive bias."""
        return self.blocks[block](x, rope=None if rope is None else rope.to(x.device), attn_mask=attn_bias)

    def head(self, x: Tensor) -> Tensor:
        """Final norm and CLIP projection on all tokens: ``[B, S, C] -> [B, S, D]``."""
        t = self.trunk
        return self.visual.head(t.head(t.fc_norm(t.norm(x))))

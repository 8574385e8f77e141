"""The hookable CLIP ViT forward every dense method modifies (training-free spec §1).

One forward, many small policies: a :class:`ViTPolicy` can replace the attention of chosen blocks, drop their residual
or FFN (SCLIP, ClearCLIP, NACLIP, MaskCLIP), or run a parallel pathway over the last blocks (CLIP Surgery, GEM). Extra
prefix tokens with an additive attention bias (MaskCLIP++ mask tokens) go through :meth:`CLIPViT.run_blocks`. The
wrapped open_clip model is never modified: positional embeddings are interpolated into a cache keyed by grid, mode and
the parameter's version counter, so fine-tuning invalidates the cache automatically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from ovs.backbones.ops import apply_module, linear

POS_EMBED_MODES = ("dino", "timm", "bilinear", "bicubic_corners")


@dataclass(frozen=True)
class AttentionInputs:
    """Everything an attention policy may use inside one block (training-free spec §1).

    Attributes:
        x: block input on the original residual stream, ``[B, S, C]``.
        h: ``ln_1(x)``, ``[B, S, C]``.
        q, k, v: per-head projections of ``h`` including the in_proj bias, ``[B, H, S, d]``.
        scale: the block's attention scale ``d ** -0.5``.
        grid: patch grid ``(g_h, g_w)``; the last ``g_h * g_w`` tokens are patches.
        num_prefix: tokens before the patches (1 for CLS, plus any MaskCLIP++ mask tokens).
        block: zero-based block index.
        attn_bias: optional additive bias ``[B, H, S, S]`` (or broadcastable).
    """

    x: Tensor
    h: Tensor
    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    grid: tuple[int, int]
    num_prefix: int
    block: int
    attn_bias: Tensor | None = None


#: An attention policy maps the block's inputs to the per-head attention output ``[B, H, S, d]`` (before the heads
#: are concatenated and ``out_proj`` is applied).
AttentionFn = Callable[[AttentionInputs], Tensor]


def softmax_attention(inputs: AttentionInputs) -> Tensor:
    """The pretrained attention ``softmax(q kᵀ · s + bias) v`` (training-free spec §1)."""
    return F.scaled_dot_product_attention(
        inputs.q, inputs.k, inputs.v, attn_mask=inputs.attn_bias, scale=inputs.scale
    )


@dataclass(frozen=True)
class BlockOverride:
    """How one block departs from the pretrained forward.

    Attributes:
        attention: replaces ``softmax(q kᵀ s) v``; ``None`` keeps the pretrained attention.
        residual: keep the attention residual ``x + o`` (False gives ``o`` alone, ClearCLIP / NACLIP).
        ffn: keep the block's MLP branch.
    """

    attention: AttentionFn | None = None
    residual: bool = True
    ffn: bool = True


@dataclass(frozen=True)
class ParallelPathway:
    """A second residual stream over the last ``depth`` blocks (CLIP Surgery; GEM §3.1 Fig. 2-3).

    In each of those blocks the path adds ``out_proj(attention(inputs))``, where the inputs are computed from the
    *original* path's ``ln_1`` features, and skips the FFN. The path starts from the original stream's input to its
    first block.

    The original stream's output is only needed for CLIP Surgery's CLS token or when asked for: otherwise the last
    block of the original stream stops after its ``ln_1`` / q, k, v (the path's inputs), which skips that block's
    attention, ``out_proj`` and FFN (about 5 % of a ViT-B/16 GEM forward) without changing the path's output.

    Attributes:
        depth: number of final blocks on the path.
        attention: the path's attention policy.
        keep_original_cls: replace the path's CLS token by the original one at the end (CLIP Surgery).
        return_original: also return the original stream's tokens (:attr:`ViTDenseOutput.original`).
    """

    depth: int
    attention: AttentionFn
    keep_original_cls: bool = False
    return_original: bool = False

    @property
    def needs_original(self) -> bool:
        """Whether the original stream's last block must run to its end."""
        return self.keep_original_cls or self.return_original


@dataclass(frozen=True)
class ViTPolicy:
    """A complete description of a modified ViT forward.

    Attributes:
        overrides: block index (negative indices count from the end) -> override.
        parallel: an optional parallel pathway.
        pos_embed: positional-embedding interpolation, see :meth:`CLIPViT.positional_embedding`.
    """

    overrides: Mapping[int, BlockOverride] = field(default_factory=dict)
    parallel: ParallelPathway | None = None
    pos_embed: str = "dino"


@dataclass
class ViTDenseOutput:
    """Result of :meth:`CLIPViT.forward_dense`.

    Attributes:
        tokens: ``ln_post`` + ``proj`` applied to all tokens of the output stream (the parallel path when there is
            one), ``[B, 1 + g_h * g_w, D]``.
        grid: patch grid ``(g_h, g_w)``.
        original: the same for the original stream when a parallel path ran with ``return_original``, else ``None``.
    """

    tokens: Tensor
    grid: tuple[int, int]
    original: Tensor | None = None

    @property
    def patch_tokens(self) -> Tensor:
        """Patch tokens only, ``[B, g_h * g_w, D]``."""
        return self.tokens[:, 1:]


def interpolate_pos_embed(pos_embed: Tensor, src_grid: tuple[int, int], grid: tuple[int, int], mode: str) -> Tensor:
    """Resample a ``[1 + N, C]`` ViT positional embedding to ``grid`` (training-free spec §1.1).

    Modes:
        ``dino`` (variant A, SCLIP / NACLIP / ClearCLIP): bicubic with ``scale_factor = (g + 0.1) / g0``,
        ``timm`` (variant B, GEM): bicubic to ``size`` with antialiasing,
        ``bilinear`` (variant C, CLIP Surgery): bilinear to ``size``,
        ``bicubic_corners`` (MaskCLIP++ spec §3.3): bicubic to ``size`` with ``align_corners=True``.
    The CLS embedding is kept. At the native grid every mode returns the input unchanged.
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"Unknown positional-embedding mode {mode!r}; choose one of {POS_EMBED_MODES}.")
    if tuple(grid) == tuple(src_grid):
        return pos_embed
    cls, patches = pos_embed[:1], pos_embed[1:]
    patches = patches.reshape(1, src_grid[0], src_grid[1], -1).permute(0, 3, 1, 2).float()  # [1, C, g0h, g0w]
    if mode == "dino":
        scale = ((grid[0] + 0.1) / src_grid[0], (grid[1] + 0.1) / src_grid[1])
        patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", align_corners=False)
    elif mode == "timm":
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False, antialias=True)
    elif mode == "bilinear":
        patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
    else:
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=True)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=0)


class CLIPViT(nn.Module):
    """Dense, hookable view of an open_clip :class:`VisionTransformer` (training-free spec §1).

    Args:
        visual: the open_clip vision tower (shared, never modified).
    """

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f"CLIPViT wraps an open_clip VisionTransformer, got {type(visual).__name__}.")
        blocks = list(visual.transformer.resblocks)
        if not all(isinstance(b, ResidualAttentionBlock) for b in blocks):
            raise NotImplementedError(
                "Only open_clip ViTs with the default ResidualAttentionBlock (fused in_proj attention) are supported; "
                "this model uses custom blocks (qk-norm / scaled cosine attention)."
            )
        if visual.attn_pool is not None:
            raise NotImplementedError("ViTs with an attentional pooler (CoCa) have no dense CLS/patch head.")
        self.visual = visual
        self._pos_cache: dict[tuple, Tensor] = {}

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_heads(self) -> int:
        return self.blocks[0].attn.num_heads

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual.patch_size)

    @property
    def output_dim(self) -> int:
        return self.visual.output_dim

    def positional_embedding(self, grid: tuple[int, int], mode: str) -> Tensor:
        """Positional embedding for ``grid``, cached per (grid, mode, parameter version) when no gradient flows."""
        pe = self.visual.positional_embedding
        src = tuple(self.visual.grid_size)
        if torch.is_grad_enabled() and pe.requires_grad:
            return interpolate_pos_embed(pe, src, grid, mode)
        key = (tuple(grid), mode, pe._version, pe.data_ptr(), pe.device, pe.dtype)
        cached = self._pos_cache.get(key)
        if cached is None:
            with torch.no_grad():
                cached = interpolate_pos_embed(pe, src, grid, mode)
            fresh = {k: v for k, v in self._pos_cache.items() if k[2:] == key[2:]}  # drop stale parameter versions
            self._pos_cache = fresh | {key: cached}
        return cached

    def embed(self, images: Tensor, pos_embed: str = "dino") -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding, CLS, positional embedding and ``ln_pre``: ``[B, 3, H, W] -> [B, 1 + N, C]``."""
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))  # [B, C, g_h, g_w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, N, C], row-major token order
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid, pos_embed).to(x.dtype)
        return v.ln_pre(x), grid

    def qkv(self, block: int, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-head q, k, v of ``h`` with block ``block``'s fused in_proj (bias included): 3 x ``[B, H, S, d]``."""
        attn = self.blocks[block].attn
        qkv = linear(h, attn.in_proj_weight, attn.in_proj_bias)  # [B, S, 3C]
        b, s, _ = qkv.shape
        qkv = qkv.view(b, s, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, S, d]
        return qkv[0], qkv[1], qkv[2]

    def attention_inputs(
        self, block: int, x: Tensor, grid: tuple[int, int], num_prefix: int = 1, attn_bias: Tensor | None = None
    ) -> AttentionInputs:
        """Build :class:`AttentionInputs` for block ``block`` on stream ``x``."""
        h = self.blocks[block].ln_1(x)
        q, k, v = self.qkv(block, h)
        return AttentionInputs(
            x=x, h=h, q=q, k=k, v=v, scale=q.shape[-1] ** -0.5, grid=grid, num_prefix=num_prefix, block=block,
            attn_bias=attn_bias,
        )

    def project_heads(self, block: int, heads_out: Tensor) -> Tensor:
        """Concatenate heads and apply ``out_proj`` and layer-scale: ``[B, H, S, d] -> [B, S, C]``."""
        blk = self.blocks[block]
        merged = heads_out.transpose(1, 2).flatten(2)  # [B, S, C]
        return blk.ls_1(apply_module(blk.attn.out_proj, merged))

    def run_block(
        self,
        block: int,
        x: Tensor,
        grid: tuple[int, int],
        override: BlockOverride | None = None,
        num_prefix: int = 1,
        attn_bias: Tensor | None = None,
    ) -> tuple[Tensor, AttentionInputs]:
        """One transformer block with an optional override; returns the new stream and the attention inputs."""
        override = override or BlockOverride()
        blk = self.blocks[block]
        inputs = self.attention_inputs(block, x, grid, num_prefix, attn_bias)
        attention = override.attention or softmax_attention
        o = self.project_heads(block, attention(inputs))
        x = x + o if override.residual else o
        if override.ffn:
            x = x + blk.ls_2(apply_module(blk.mlp, blk.ln_2(x)))
        return x, inputs

    def head(self, x: Tensor) -> Tensor:
        """``ln_post`` on all tokens, then ``proj``: ``[B, S, C] -> [B, S, D]`` (training-free spec §1)."""
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def _resolve_overrides(self, policy: ViTPolicy) -> dict[int, BlockOverride]:
        resolved: dict[int, BlockOverride] = {}
        for index, override in policy.overrides.items():
            i = index + self.num_blocks if index < 0 else index
            if not 0 <= i < self.num_blocks:
                raise IndexError(f"Block override index {index} is out of range for {self.num_blocks} blocks.")
            resolved[i] = override
        return resolved

    def forward_dense(self, images: Tensor, policy: ViTPolicy | None = None) -> ViTDenseOutput:
        """Dense tokens of normalised images ``[B, 3, H, W]`` under ``policy`` (default: the pretrained forward)."""
        policy = policy or ViTPolicy()
        overrides = self._resolve_overrides(policy)
        parallel = policy.parallel
        if parallel is not None and not 0 < parallel.depth <= self.num_blocks:
            raise ValueError(f"Parallel pathway depth must be in 1..{self.num_blocks}, got {parallel.depth}.")
        x, grid = self.embed(images, policy.pos_embed)
        if parallel is None:
            for i in range(self.num_blocks):
                x, _ = self.run_block(i, x, grid, overrides.get(i))
            return ViTDenseOutput(tokens=self.head(x), grid=grid)
        path_start = self.num_blocks - parallel.depth
        for i in range(path_start):
            x, _ = self.run_block(i, x, grid, overrides.get(i))
        path = x
        for i in range(path_start, self.num_blocks):
            if i == self.num_blocks - 1 and not parallel.needs_original:
                inputs = self.attention_inputs(i, x, grid)
            else:
                x, inputs = self.run_block(i, x, grid, overrides.get(i))
            path = path + self.project_heads(i, parallel.attention(inputs))
        if parallel.keep_original_cls:
            path = torch.cat([x[:, :1], path[:, 1:]], dim=1)
        original = self.head(x) if parallel.return_original else None
        return ViTDenseOutput(tokens=self.head(path), grid=grid, original=original)

    def run_blocks(
        self,
        x: Tensor,
        grid: tuple[int, int],
        start: int,
        num_prefix: int = 1,
        attn_bias: Tensor | Callable[[int], Tensor] | None = None,
    ) -> Tensor:
        """Run blocks ``start..end`` on a stream with ``num_prefix`` tokens before the patches and an additive bias.

        This is the entry point for extra tokens (MaskCLIP++ mask tokens, MaskCLIP++ spec §3.3): the caller builds the
        sequence ``[extra | CLS | patches]`` and a bias ``[B, H, S, S]`` (or a function of the block index returning
        one, for per-layer learned scales); every block is the unmodified pretrained one.
        """
        for i in range(start, self.num_blocks):
            bias = attn_bias(i) if callable(attn_bias) else attn_bias
            x, _ = self.run_block(i, x, grid, None, num_prefix, bias)
        return x

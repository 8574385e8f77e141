"""Mask-embedding extraction per CLIP architecture (MaskCLIP++ paper §3.2 eq. 1-2, spec §3).

A mask encoder maps a padded image batch and the soft masks of its images to one CLIP embedding per mask:

* :class:`ConvNeXtMaskPooling` — global-average-pooling CLIPs: mask-weighted average of the stride-32 map, then the CLIP
  head (LayerNorm after pooling, projection) — eq. 1 with φ = L1 normalisation (spec §3.2). Also returns the dense
  per-location embeddings E_p for the pseudo-text PSM.
* :class:`ViTMaskTokens` / :class:`EvaMaskTokens` — attention-pooling ViTs: mask tokens, initialised from each image's
  CLS token at the input of the last ``depth`` blocks, attend only to patches with the additive bias of eq. 2
  (α_{l,h} · M̃ inside the adaptively binarised mask, −100 outside), α learned in log space per layer and head; image
  tokens never see mask tokens, so image features are unchanged (spec §3.3).
* :class:`ResNetMaskAttentionPool` — ModifiedResNet: the attention pool with one query per mask and the same bias, α
  per head (spec §3.4).

All masks of a batch are handled by tensor ops: pooling is one einsum, the attention bias is built with ``where`` and
``cat`` on ``[B, Q_max, ...]`` tensors padded per image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs.backbones import CLIP, CLIPConvNeXt, CLIPEva, CLIPResNet, CLIPViT

DOWNSAMPLE_METHODS = ("bilinear", "area")


@dataclass
class MaskBatch:
    """Encoder input (spec §3.1).

    Attributes:
        images: CLIP-normalised images padded bottom/right to a common size, ``[B, 3, H, W]``.
        masks: soft masks in ``[0, 1]`` at the same padded size, all images concatenated, ``[N, H, W]``.
        image_index: image of each mask, non-decreasing, ``[N]`` (int64).
        sizes: unpadded ``(height, width)`` of each image, ``[B, 2]`` (int64).
    """

    images: Tensor
    masks: Tensor
    image_index: Tensor
    sizes: Tensor

    def __post_init__(self) -> None:
        b, n = self.images.shape[0], self.masks.shape[0]
        if self.images.ndim != 4 or self.masks.ndim != 3 or self.masks.shape[-2:] != self.images.shape[-2:]:
            raise ValueError(
                f"MaskBatch needs images [B, 3, H, W] and masks [N, H, W] of the same size, got "
                f"{tuple(self.images.shape)} and {tuple(self.masks.shape)}."
            )
        if self.image_index.shape != (n,) or self.sizes.shape != (b, 2):
            raise ValueError(f"image_index must be [{n}] and sizes [{b}, 2].")
        if n and (bool((self.image_index[1:] < self.image_index[:-1]).any()) or int(self.image_index.max()) >= b):
            raise ValueError("image_index must be non-decreasing (masks grouped by image) and < the number of images.")

    @property
    def num_images(self) -> int:
        return self.images.shape[0]


@dataclass
class MaskEmbeddings:
    """Encoder output (spec §3.5).

    Attributes:
        embeddings: one CLIP embedding per mask, not normalised, ``[N, D]``.
        areas: soft area of each mask on the feature grid, ``[N]`` (``IGNORE_EMPTY`` drops areas ≤ 0, spec §5).
        dense: per-location embeddings E_p ``[B, D, h, w]`` when requested.
        dense_valid: ``bool [B, h * w]``, grid cells overlapping each image's unpadded area (with ``dense``).
    """

    embeddings: Tensor
    areas: Tensor
    dense: Tensor | None = None
    dense_valid: Tensor | None = None


def downsample_masks(masks: Tensor, grid: tuple[int, int], method: str = "bilinear") -> Tensor:
    """Resize soft masks ``[N, H, W]`` to the feature grid ``[N, h, w]`` (spec §3.1 step 4, quirk Q9).

    ``bilinear`` (align_corners False, no antialiasing) is the reference; ``area`` averages each cell.
    """
    if method not in DOWNSAMPLE_METHODS:
        raise ValueError(f"Unknown mask downsampling {method!r}; choose one of {DOWNSAMPLE_METHODS}.")
    if masks.shape[0] == 0:
        return masks.new_zeros(0, *grid)
    if method == "bilinear":
        return F.interpolate(masks[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]
    return F.interpolate(masks[:, None], size=grid, mode="area")[:, 0]


def group_by_image(values: Tensor, image_index: Tensor, num_images: int) -> tuple[Tensor, Tensor]:
    """Scatter per-mask rows ``[N, ...]`` into ``[B, Q_max, ...]`` (zeros for padding slots).

    Returns:
        The padded tensor and the slot of each mask within its image, ``[N]``.
    """
    counts = torch.bincount(image_index, minlength=num_images)  # [B]
    q_max = int(counts.max()) if values.shape[0] else 0
    offsets = counts.cumsum(0) - counts  # first mask of each image
    slot = torch.arange(values.shape[0], device=values.device) - offsets[image_index]  # [N]
    padded = values.new_zeros(num_images, q_max, *values.shape[1:])
    padded[image_index, slot] = values
    return padded, slot


def binarize_masks(masks: Tensor, threshold: float | None = None) -> Tensor:
    """``bool``: cells above τ = max(M̃)/2 per mask (``threshold=None``, paper eq. 2) or a fixed τ (spec §3.3)."""
    tau = masks.amax(dim=-1, keepdim=True) / 2 if threshold is None else masks.new_tensor(threshold)
    return masks > tau


def mask_patch_bias(masks: Tensor, inside: Tensor, alpha: Tensor, outside: float) -> Tensor:
    """Mask-to-patch attention bias α_h · M̃ inside the mask, ``outside`` elsewhere (paper eq. 2, spec §12).

    Args:
        masks: soft downsampled masks ``[B, Q, P]``.
        inside: their binarisation ``bool [B, Q, P]``.
        alpha: per-head scale ``[H]``.
        outside: bias outside the mask (−100 in the reference; −∞ in the paper).

    Returns:
        ``[B, H, Q, P]``.
    """
    scaled = alpha.view(1, -1, 1, 1) * masks[:, None]  # [B, H, Q, P]
    return torch.where(inside[:, None], scaled, scaled.new_full((), outside))


def mask_token_sequence_bias(patch_bias: Tensor, masks_first: bool) -> Tensor:
    """Full additive attention bias ``[B, H, S, S]`` for a sequence of Q mask tokens, CLS and P patches (spec §3.3).

    Mask tokens see only patches (``patch_bias``); CLS and patches never see mask tokens and keep their own attention
    (bias 0). ``masks_first``: layout ``[masks | CLS | patches]`` (:meth:`CLIPViT.run_blocks`), else ``[CLS | patches |
    masks]`` (:class:`CLIPEva`).
    """
    b, h, q, p = patch_bias.shape
    n = 1 + p
    blocked = patch_bias.new_full((), float("-inf"))
    open_ = patch_bias.new_zeros(())
    if masks_first:
        mask_rows = torch.cat([blocked.expand(b, h, q, q + 1), patch_bias], dim=-1)  # [B, H, Q, S]
        image_rows = torch.cat([blocked.expand(b, h, n, q), open_.expand(b, h, n, n)], dim=-1)  # [B, H, n, S]
        return torch.cat([mask_rows, image_rows], dim=2)
    mask_rows = torch.cat([blocked.expand(b, h, q, 1), patch_bias, blocked.expand(b, h, q, q)], dim=-1)
    image_rows = torch.cat([open_.expand(b, h, n, n), blocked.expand(b, h, n, q)], dim=-1)
    return torch.cat([image_rows, mask_rows], dim=2)


def grid_validity(sizes: Tensor, grid: tuple[int, int], stride: int) -> Tensor:
    """``bool [B, h * w]``: feature cells whose top-left pixel lies inside each image's unpadded area."""
    rows = torch.arange(grid[0], device=sizes.device) * stride  # [h]
    cols = torch.arange(grid[1], device=sizes.device) * stride  # [w]
    valid = (rows[None, :, None] < sizes[:, 0, None, None]) & (cols[None, None, :] < sizes[:, 1, None, None])
    return valid.flatten(1)


class MaskEncoder(nn.Module, ABC):
    """Common interface: ``forward(batch, dense) -> MaskEmbeddings``.

    Attributes:
        size_divisibility: images are padded to a multiple of this (the stride / patch size).
        provides_dense: whether ``dense=True`` is supported (E_p for the pseudo-text PSM).
    """

    size_divisibility: int = 32
    provides_dense: bool = False

    def __init__(self, downsample: str = "bilinear") -> None:
        super().__init__()
        if downsample not in DOWNSAMPLE_METHODS:
            raise ValueError(f"Unknown mask downsampling {downsample!r}; choose one of {DOWNSAMPLE_METHODS}.")
        self.downsample = downsample

    @abstractmethod
    def forward(self, batch: MaskBatch, dense: bool = False) -> MaskEmbeddings:
        """One embedding per mask of ``batch``; the dense E_p too when ``dense`` (and :attr:`provides_dense`)."""

    def _check_dense(self, dense: bool) -> None:
        if dense and not self.provides_dense:
            raise ValueError(f"{type(self).__name__} provides no dense embeddings (needed by the pseudo-text PSM).")


class ConvNeXtMaskPooling(MaskEncoder):
    """E_m = Proj(LN(Σ_p M̃[p] F[:, p] / (Σ_p M̃[p] + 1e-6))) on the stage-4 map (paper eq. 1, spec §3.2).

    Args:
        dense_view: the backbone's :class:`CLIPConvNeXt`.
        downsample: mask downsampling to the stride-32 grid.
    """

    provides_dense = True

    def __init__(self, dense_view: CLIPConvNeXt, downsample: str = "bilinear") -> None:
        super().__init__(downsample)
        self.dense_view = dense_view
        self.size_divisibility = dense_view.stride

    def forward(self, batch: MaskBatch, dense: bool = False) -> MaskEmbeddings:
        if dense:
            feats, p_embs = self.dense_view.dense(batch.images)  # [B, C, h, w], [B, D, h, w]
        else:
            feats, p_embs = self.dense_view.features(batch.images), None
        b, c, h, w = feats.shape
        masks = downsample_masks(batch.masks, (h, w), self.downsample).flatten(1)  # [N, hw]
        areas = masks.sum(dim=1)  # [N]
        weights = masks / (areas[:, None] + 1e-6)  # φ = L1 normalisation
        per_image = weights.new_zeros(masks.shape[0], b, h * w)  # [N, B, hw], row n non-zero at its image only
        per_image[torch.arange(masks.shape[0], device=masks.device), batch.image_index] = weights
        pooled = torch.einsum("nbp,bpc->nc", per_image.to(feats.dtype), feats.flatten(2).transpose(1, 2))  # [N, C]
        embeddings = self.dense_view.head(pooled)  # LayerNorm after pooling, then the projection
        valid = grid_validity(batch.sizes, (h, w), self.size_divisibility) if dense else None
        return MaskEmbeddings(embeddings, areas, p_embs, valid)


class _MaskTokenEncoder(MaskEncoder):
    """Shared parts of the ViT / EVA mask-token encoders (spec §3.3).

    Args:
        num_blocks, num_heads: of the ViT.
        depth: number of final blocks that carry mask tokens (3 = the paper's third-to-last insertion).
        logit_scale_init: initial log α (−5, paper App. C.2).
        learnable_scale: whether log α is trained.
        threshold: fixed mask threshold, ``None`` for the adaptive max/2.
        outside: bias outside the mask.
        downsample: mask downsampling to the patch grid.
    """

    def __init__(
        self,
        num_blocks: int,
        num_heads: int,
        depth: int = 3,
        logit_scale_init: float = -5.0,
        learnable_scale: bool = True,
        threshold: float | None = None,
        outside: float = -100.0,
        downsample: str = "bilinear",
    ) -> None:
        super().__init__(downsample)
        if not 1 <= depth <= num_blocks:
            raise ValueError(f"Mask-token depth must be in 1..{num_blocks} blocks, got {depth}.")
        self.start = num_blocks - depth
        self.threshold = threshold
        self.outside = outside
        self.mask_logit_scale = nn.Parameter(
            torch.full((depth, num_heads), float(logit_scale_init)), requires_grad=learnable_scale
        )  # log α per neck layer and head

    def _padded_masks(self, batch: MaskBatch, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Downsampled masks per image ``[B, Q, P]``, their binarisation, the mask slots ``[N]`` and areas ``[N]``."""
        masks = downsample_masks(batch.masks, grid, self.downsample).flatten(1)  # [N, P]
        padded, slot = group_by_image(masks, batch.image_index, batch.num_images)  # [B, Q, P]
        return padded, binarize_masks(padded, self.threshold), slot, masks.sum(dim=1)

    def layer_bias(self, layer: int, masks: Tensor, inside: Tensor, masks_first: bool) -> Tensor:
        """Bias ``[B, H, S, S]`` of neck layer ``layer`` (0 = first block with mask tokens)."""
        alpha = self.mask_logit_scale[layer].exp()  # [H]
        return mask_token_sequence_bias(mask_patch_bias(masks, inside, alpha, self.outside), masks_first)


class ViTMaskTokens(_MaskTokenEncoder):
    """Mask tokens through the last ``depth`` blocks of an open_clip ViT via :meth:`CLIPViT.run_blocks` (spec §3.3).

    The positional embedding is resized bicubically with ``align_corners=True``. After the last block:
    ``E_m = ln_post(token) @ proj``.
    """

    def __init__(self, vit: CLIPViT, **kwargs: float | int | bool | str | None) -> None:
        super().__init__(vit.num_blocks, vit.num_heads, **kwargs)
        self.vit = vit
        self.size_divisibility = vit.patch_size[0]

    def forward(self, batch: MaskBatch, dense: bool = False) -> MaskEmbeddings:
        self._check_dense(dense)
        x, grid = self.vit.embed(batch.images, "bicubic_corners")  # [B, 1 + P, C]
        for i in range(self.start):
            x, _ = self.vit.run_block(i, x, grid)
        masks, inside, slot, areas = self._padded_masks(batch, grid)
        q = masks.shape[1]
        tokens = x[:, :1].expand(-1, q, -1)  # each image's own CLS at the neck input
        x = self.vit.run_blocks(
            torch.cat([tokens, x], dim=1),
            grid,
            self.start,
            num_prefix=q + 1,
            attn_bias=lambda i: self.layer_bias(i - self.start, masks, inside, masks_first=True),
        )
        embeddings = self.vit.head(x[:, :q])  # [B, Q, D]
        return MaskEmbeddings(embeddings[batch.image_index, slot], areas)


class EvaMaskTokens(_MaskTokenEncoder):
    """Mask tokens through the last ``depth`` blocks of a timm EVA / EVA02 tower (spec §3.3).

    Fixes of the reference (spec §11): mask tokens start from each image's own CLS (Q1), and patches keep their RoPE
    positions because mask tokens are appended after them with the identity rotation (Q2).
    """

    def __init__(self, eva: CLIPEva, **kwargs: float | int | bool | str | None) -> None:
        super().__init__(eva.num_blocks, eva.num_heads, **kwargs)
        self.eva = eva
        self.size_divisibility = eva.patch_size[0]

    def forward(self, batch: MaskBatch, dense: bool = False) -> MaskEmbeddings:
        self._check_dense(dense)
        x, grid = self.eva.embed(batch.images, "bicubic_corners")  # [B, 1 + P, C]
        rope = self.eva.rope(grid)
        for i in range(self.start):
            x = self.eva.run_block(i, x, rope)
        masks, inside, slot, areas = self._padded_masks(batch, grid)
        q = masks.shape[1]
        x = torch.cat([x, x[:, :1].expand(-1, q, -1)], dim=1)  # [CLS | patches | masks]
        rope = self.eva.rope(grid, num_extra=q)
        for i in range(self.start, self.eva.num_blocks):
            x = self.eva.run_block(i, x, rope, self.layer_bias(i - self.start, masks, inside, masks_first=False))
        embeddings = self.eva.head(x[:, x.shape[1] - q :])  # [B, Q, D]
        return MaskEmbeddings(embeddings[batch.image_index, slot], areas)


class ResNetMaskAttentionPool(MaskEncoder):
    """The ModifiedResNet attention pool with one query per mask (copies of the mean token) over the spatial tokens
    and the bias α_h · M̃ / −100 (paper eq. 2, spec §3.4). Dense E_p: the value path of every spatial token.

    Args:
        resnet: the backbone's :class:`CLIPResNet`.
        logit_scale_init, learnable_scale, threshold, outside, downsample: as :class:`ViTMaskTokens`.
    """

    provides_dense = True

    def __init__(
        self,
        resnet: CLIPResNet,
        logit_scale_init: float = -5.0,
        learnable_scale: bool = True,
        threshold: float | None = None,
        outside: float = -100.0,
        downsample: str = "bilinear",
    ) -> None:
        super().__init__(downsample)
        self.resnet = resnet
        self.size_divisibility = resnet.stride
        self.threshold = threshold
        self.outside = outside
        self.mask_logit_scale = nn.Parameter(
            torch.full((resnet.num_heads,), float(logit_scale_init)), requires_grad=learnable_scale
        )  # log α per head

    def forward(self, batch: MaskBatch, dense: bool = False) -> MaskEmbeddings:
        feats = self.resnet.features(batch.images)  # [B, C, h, w]
        b, _, h, w = feats.shape
        tokens = self.resnet.tokens(feats)  # [B, 1 + hw, C]
        masks = downsample_masks(batch.masks, (h, w), self.downsample).flatten(1)  # [N, hw]
        padded, slot = group_by_image(masks, batch.image_index, b)  # [B, Q, hw]
        inside = binarize_masks(padded, self.threshold)
        bias = mask_patch_bias(padded, inside, self.mask_logit_scale.exp(), self.outside)  # [B, H, Q, hw]
        pooled = self.resnet.attend(tokens[:, :1].expand(-1, padded.shape[1], -1), tokens[:, 1:], bias)  # [B, Q, D]
        p_embs = valid = None
        if dense:
            pool = self.resnet.pool
            p_embs = pool.c_proj(pool.v_proj(tokens[:, 1:])).transpose(1, 2).reshape(b, -1, h, w)  # [B, D, h, w]
            valid = grid_validity(batch.sizes, (h, w), self.size_divisibility)
        return MaskEmbeddings(pooled[batch.image_index, slot], masks.sum(dim=1), p_embs, valid)


def build_mask_encoder(
    clip: CLIP,
    depth: int = 3,
    logit_scale_init: float = -5.0,
    learnable_scale: bool = True,
    threshold: float | None = None,
    outside: float = -100.0,
    downsample: str = "bilinear",
) -> MaskEncoder:
    """The mask encoder of ``clip``'s architecture (spec §3); ViT-only arguments are ignored for CNNs."""
    attention = {
        "logit_scale_init": logit_scale_init,
        "learnable_scale": learnable_scale,
        "threshold": threshold,
        "outside": outside,
        "downsample": downsample,
    }
    if clip.architecture == "convnext":
        return ConvNeXtMaskPooling(clip.dense, downsample)
    if clip.architecture == "resnet":
        return ResNetMaskAttentionPool(clip.dense, **attention)
    if clip.architecture == "vit":
        return ViTMaskTokens(clip.dense, depth=depth, **attention)
    if clip.architecture == "eva":
        return EvaMaskTokens(clip.dense, depth=depth, **attention)
    raise NotImplementedError(f"MaskCLIP++ has no mask encoder for architecture {clip.architecture!r}.")

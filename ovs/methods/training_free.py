"""Training-free dense CLIP methods as attention policies on one hooked ViT forward (training-free spec §1-§7).

Each method is a small :class:`~ovs.methods.base.DenseSegmenter` subclass that only says which blocks change and how:

=============  ==============================================================  ====================  ========
method         changed block(s) and attention                                  residual / FFN there  pos-emb.
=============  ==============================================================  ====================  ========
VanillaCLIP    none (spec §1.3)                                                kept / kept           A dino
MaskCLIP       last block: identity attention, ``o = out_proj(v)`` (spec §4)   kept / kept (option)  A dino
CLIPSurgery    parallel path over the last 6 blocks: ``softmax(v vᵀ s) v``,     path / none           C bilinear
               original CLS kept, feature surgery on similarities (spec §5)
SCLIP          last block: ``softmax(q qᵀ s) + softmax(k kᵀ s)`` (SCLIP eq. 3)  kept / kept (option)  A dino
GEM            parallel path over the last 4 blocks: iterated L2-normalised     path / none           B timm
               q/k/v self-self attention, adaptive temperature, ensemble
               (GEM eq. 2-7)
ClearCLIP      last block: ``softmax(q qᵀ s) v`` (spec §6)                      dropped / dropped     A dino
NACLIP         last block: ``softmax(k kᵀ s + Gaussian(σ = 5)) v`` (spec §7)   dropped / dropped     A dino
=============  ==============================================================  ====================  ========

Every attention is written with ``F.scaled_dot_product_attention`` (fused kernels, no materialised ``S x S`` map on
GPU): ``softmax(a bᵀ s) c`` is ``sdpa(a, b, c, scale=s)`` and a per-image inverse temperature is folded into the
query. ProxyCLIP (spec §8) is not included: it needs DINO weights from ``torch.hub``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs.backbones import AttentionInputs, BlockOverride, ParallelPathway, ViTDenseOutput, ViTPolicy
from ovs.inference import minmax_normalize, resize_logits
from ovs.methods.base import DenseSegmenter

# --------------------------------------------------------------------------------------------------------------------
# Attention policies (functions of the block's AttentionInputs, returning per-head outputs [B, H, S, d])


def value_attention(inputs: AttentionInputs) -> Tensor:
    """MaskCLIP's value path: every token attends only to itself, so the output is ``v`` (spec §4)."""
    return inputs.v


def correlative_attention(inputs: AttentionInputs) -> Tensor:
    """SCLIP's correlative self-attention, ``(softmax(q qᵀ s) + softmax(k kᵀ s)) v`` (SCLIP eq. 3, spec §2.2).

    Rows of the combined attention sum to 2; there is no renormalisation.
    """
    q, k, v, s = inputs.q, inputs.k, inputs.v, inputs.scale
    return F.scaled_dot_product_attention(q, q, v, scale=s) + F.scaled_dot_product_attention(k, k, v, scale=s)


def query_query_attention(inputs: AttentionInputs) -> Tensor:
    """ClearCLIP's ``softmax(q qᵀ s) v`` (spec §6)."""
    return F.scaled_dot_product_attention(inputs.q, inputs.q, inputs.v, scale=inputs.scale)


def value_value_attention(inputs: AttentionInputs) -> Tensor:
    """CLIP Surgery's ``softmax(v vᵀ s) v`` for ViTs, no normalisation (spec §5, GEM eq. 1)."""
    return F.scaled_dot_product_attention(inputs.v, inputs.v, inputs.v, scale=inputs.scale)


def gaussian_neighbourhood_bias(grid: tuple[int, int], sigma: float, num_prefix: int = 1) -> Tensor:
    """NACLIP's additive attention bias ``Ω [S, S]`` (spec §7): ``exp(-((r_i - r_j)² + (c_i - c_j)²) / (2 σ²))``
    between patch-grid positions, zero rows / columns for the ``num_prefix`` tokens before the patches."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()  # [N, 2], row-major token order
    squared = torch.cdist(positions, positions).square()  # [N, N]
    omega = torch.exp(-squared / (2.0 * sigma**2)).float()
    return F.pad(omega, (num_prefix, 0, num_prefix, 0))  # [S, S]


class NeighbourhoodAttention:
    """NACLIP's neighbourhood attention ``softmax(k kᵀ s + Ω) v`` with a Gaussian Ω of width ``sigma`` (spec §7).

    Ω depends only on the grid and is cached per (grid, prefix, device, dtype).
    """

    def __init__(self, sigma: float = 5.0) -> None:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}.")
        self.sigma = sigma
        self._bias: dict[tuple[Any, ...], Tensor] = {}

    def bias(self, grid: tuple[int, int], num_prefix: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (tuple(grid), num_prefix, str(device), dtype)
        if key not in self._bias:
            self._bias[key] = gaussian_neighbourhood_bias(grid, self.sigma, num_prefix).to(device=device, dtype=dtype)
        return self._bias[key]

    def __call__(self, inputs: AttentionInputs) -> Tensor:
        k = inputs.k
        bias = self.bias(inputs.grid, inputs.num_prefix, k.device, k.dtype)
        return F.scaled_dot_product_attention(k, k, inputs.v, attn_mask=bias, scale=inputs.scale)


class GEMAttention:
    """GEM's self-self attention on the parallel path (GEM §3.1 eq. 2-7, spec §3.2).

    For each projection ``z`` in ``projections`` (default q, k, v): ``iterations`` times ``z <- L2norm(z)``,
    ``z <- softmax(β z zᵀ) z`` (eq. 5-6); then ``z <- L2norm(z)`` and ``out_z = softmax(β z zᵀ) v`` (applied to the
    un-normalised values); the output is the mean over projections (eq. 7). The inverse temperature β is adaptive,
    ``mean_t ‖ln_1(x)_t‖₂ · d_head^-½`` per image (eq. 3-4 as coded), or a constant (the package's
    ``ss_attn_temp``). All projections run in one batched attention call per step.
    """

    def __init__(
        self,
        iterations: int = 1,
        inverse_temperature: float | None = None,
        projections: tuple[str, ...] = ("q", "k", "v"),
    ) -> None:
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}.")
        if inverse_temperature is not None and inverse_temperature <= 0:
            raise ValueError(f"inverse_temperature must be > 0 or None (adaptive), got {inverse_temperature}.")
        if not projections or any(p not in ("q", "k", "v") for p in projections):
            raise ValueError(f"projections must be a non-empty subset of ('q', 'k', 'v'), got {projections}.")
        self.iterations = iterations
        self.inverse_temperature = inverse_temperature
        self.projections = tuple(projections)

    def beta(self, inputs: AttentionInputs) -> Tensor:
        """Inverse temperature per image, ``[B]`` (GEM eq. 4)."""
        batch = inputs.h.shape[0]
        if self.inverse_temperature is not None:
            return inputs.h.new_full((batch,), self.inverse_temperature)
        return inputs.h.norm(dim=-1).mean(dim=-1) * inputs.scale

    def __call__(self, inputs: AttentionInputs) -> Tensor:
        p = len(self.projections)
        batch = inputs.v.shape[0]
        z = torch.cat([getattr(inputs, name) for name in self.projections])  # [P * B, H, S, d]
        beta = self.beta(inputs).to(z.dtype).repeat(p).view(-1, 1, 1, 1)  # [P * B, 1, 1, 1]
        for _ in range(self.iterations):
            z = F.normalize(z, dim=-1)
            z = F.scaled_dot_product_attention(beta * z, z, z, scale=1.0)
        z = F.normalize(z, dim=-1)
        values = inputs.v.repeat(p, 1, 1, 1)  # [P * B, H, S, d]
        out = F.scaled_dot_product_attention(beta * z, z, values, scale=1.0)
        return out.view(p, batch, *out.shape[1:]).mean(dim=0)  # [B, H, S, d]


# --------------------------------------------------------------------------------------------------------------------
# Methods

#: SCLIP's released protocol (spec §2.5 defaults): short side 336, slide 224 / 112, logit scale 40, 80 templates.
SCLIP_PROTOCOL: dict[str, Any] = {
    "resize": "short", "size": 336, "slide_crop": 224, "slide_stride": 112, "logit_scale": 40.0,
    "templates": "openai80",
}  # fmt: skip


class VanillaCLIP(DenseSegmenter):
    """The vanilla CLIP dense baseline: all blocks unmodified, patch tokens through ``ln_post`` and ``proj``
    (spec §1.3; SCLIP Table 1 "CLIP" row under SCLIP's protocol)."""

    default_inference = SCLIP_PROTOCOL


class MaskCLIP(DenseSegmenter):
    """MaskCLIP: the last block's attention replaced by the value path (spec §4).

    Args:
        residual: keep the last block's residual and FFN (the original code, default); ``False`` gives ClearCLIP's
            ``ignore_residual=True`` variant (``o`` only).
        **kwargs: :class:`DenseSegmenter` arguments.
    """

    default_inference = {**SCLIP_PROTOCOL, "templates": "maskclip85"}

    def __init__(self, residual: bool = True, **kwargs: Any) -> None:
        self.residual = residual
        super().__init__(**kwargs)

    def build_policy(self) -> ViTPolicy:
        override = BlockOverride(attention=value_attention, residual=self.residual, ffn=self.residual)
        return ViTPolicy(overrides={-1: override}, pos_embed=self.pos_embed)


class SCLIP(DenseSegmenter):
    """SCLIP: correlative self-attention in the last block (SCLIP §3.3 eq. 3, spec §2).

    Args:
        keep_residual_ffn: keep the last block's residual and FFN (released code and README numbers, default);
            ``False`` drops both (ClearCLIP-style reading of the paper).
        **kwargs: :class:`DenseSegmenter` arguments.
    """

    default_inference = SCLIP_PROTOCOL

    def __init__(self, keep_residual_ffn: bool = True, **kwargs: Any) -> None:
        self.keep_residual_ffn = keep_residual_ffn
        super().__init__(**kwargs)

    def build_policy(self) -> ViTPolicy:
        keep = self.keep_residual_ffn
        override = BlockOverride(attention=correlative_attention, residual=keep, ffn=keep)
        return ViTPolicy(overrides={-1: override}, pos_embed=self.pos_embed)


class ClearCLIP(DenseSegmenter):
    """ClearCLIP: ``softmax(q qᵀ s) v`` in the last block without residual and FFN (spec §6); slide 448 / 224 with
    patch-multiple padding, short side 448, logit scale 50."""

    default_inference = {
        "resize": "short", "size": 448, "slide_crop": 448, "slide_stride": 224, "pad_to_patch": True,
        "logit_scale": 50.0, "templates": "openai80",
    }  # fmt: skip

    def build_policy(self) -> ViTPolicy:
        override = BlockOverride(attention=query_query_attention, residual=False, ffn=False)
        return ViTPolicy(overrides={-1: override}, pos_embed=self.pos_embed)


class NACLIP(DenseSegmenter):
    """NACLIP: neighbourhood attention ``softmax(k kᵀ s + Ω) v`` in the last block, no residual and FFN (spec §7);
    SCLIP's pipeline with logit scale 40, probabilities renormalised after the synonym max and PAMR (10 iterations,
    dilations 8 / 16) on by default. As in NACLIP's ``postprocess_result``, the label and ``prob_thd`` come from the
    probabilities before the renormalisation (``threshold_order: before_renormalize``; ``after_renormalize`` is the
    option).

    Args:
        sigma: width of the Gaussian neighbourhood in patches.
        **kwargs: :class:`DenseSegmenter` arguments.
    """

    default_inference = {**SCLIP_PROTOCOL, "renormalize": True, "pamr_steps": 10, "pamr_dilations": (8, 16)}

    def __init__(self, sigma: float = 5.0, **kwargs: Any) -> None:
        self.sigma = sigma
        super().__init__(**kwargs)

    def build_policy(self) -> ViTPolicy:
        override = BlockOverride(attention=NeighbourhoodAttention(self.sigma), residual=False, ffn=False)
        return ViTPolicy(overrides={-1: override}, pos_embed=self.pos_embed)


class CLIPSurgery(DenseSegmenter):
    """CLIP Surgery: v-v attention on a parallel path over the last ``depth`` blocks with the original CLS token
    (architecture surgery), and feature surgery on the similarities (spec §5).

    Feature surgery: ``w = softmax(t · F_cls Tᵀ) / mean``; ``sim[i, c] = Σ_ch (F_i ⊙ T_c ⊙ w_c − mean_c'(F_i ⊙
    T_c' ⊙ w_c'))``, computed as ``w_c (F_i · T_c) − F_i · mean_c'(w_c' T_c')`` without the ``[N, K, D]`` product.
    The reference's in-place square-only positional embedding (variant C) becomes a non-mutating bilinear
    interpolation that also handles non-square inputs.

    Min-max maps follow the reference's ``get_similarity_map``: each name's map is min-max normalised on the patch
    grid and then upsampled bilinearly (``minmax_order: grid_first``, used when ``score: minmax``; GEM upsamples
    first). :meth:`surgery_similarity` returns the similarity of every token (CLS row included) and
    :meth:`similarity_map` the reference's maps.

    Args:
        depth: number of final blocks on the surgery path (6 in the released code).
        feature_surgery: apply feature surgery (``False`` = plain cosine of the surgery tokens).
        surgery_temperature: ``t`` of the class weights.
        **kwargs: :class:`DenseSegmenter` arguments.
    """

    default_inference = {**SCLIP_PROTOCOL, "templates": "maskclip85", "minmax_order": "grid_first"}
    default_pos_embed = "bilinear"

    def __init__(self, depth: int = 6, feature_surgery: bool = True, surgery_temperature: float = 2.0,
                 **kwargs: Any) -> None:
        self.depth = depth
        self.feature_surgery = feature_surgery
        self.surgery_temperature = surgery_temperature
        super().__init__(**kwargs)

    def build_policy(self) -> ViTPolicy:
        check_depth(self.depth, self.clip.dense.num_blocks)
        path = ParallelPathway(depth=self.depth, attention=value_value_attention, keep_original_cls=True)
        return ViTPolicy(parallel=path, pos_embed=self.pos_embed)

    def token_similarity(self, tokens: Tensor, text: Tensor) -> Tensor:
        """Feature-surgery similarity of all tokens ``[B, 1 + N, D]`` with ``text [K_names, D]``:
        ``[B, 1 + N, K_names]`` (spec §5; the class weights come from the CLS row, token 0)."""
        tokens = F.normalize(tokens.float(), dim=-1)  # [B, 1 + N, D]
        if not self.feature_surgery:
            return tokens @ text.T
        weights = torch.softmax(self.surgery_temperature * tokens[:, 0] @ text.T, dim=-1)  # [B, K]
        weights = weights / weights.mean(dim=-1, keepdim=True)
        redundant = (weights @ text) / text.shape[0]  # [B, D] = mean_c w_c T_c
        return (tokens @ text.T) * weights[:, None] - (tokens @ redundant[..., None])  # [B, 1 + N, K]

    def similarity(self, output: ViTDenseOutput, text: Tensor) -> Tensor:
        """Feature-surgery similarity of the patch tokens ``[B, N, K_names]`` (spec §5)."""
        return self.token_similarity(output.tokens, text)[:, 1:]

    @torch.inference_mode()
    def surgery_similarity(self, images: Tensor, normalized: bool = False) -> tuple[Tensor, tuple[int, int]]:
        """Similarity of every token with every name of the current vocabulary, as the reference's
        ``clip_feature_surgery(image_features, text_features)``: ``[B, 1 + g_h * g_w, K_names]`` (row 0 = CLS) and
        the patch grid ``(g_h, g_w)``. ``images [B, 3, H, W]`` are used at their size (no protocol resize), in
        ``[0, 255]`` or already normalised (``normalized=True``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images [B, 3, H, W], got shape {tuple(images.shape)}.")
        device = self.clip.pixel_mean.device
        pixels = images.to(device).float() if normalized else self.clip.normalize(images.to(device))
        with self.autocast():
            output = self.clip.dense.forward_dense(pixels, self.policy)
        return self.token_similarity(output.tokens, self.vocabulary.classifier.embeddings.float()), output.grid

    def similarity_map(self, images: Tensor, size: tuple[int, int] | None = None,
                       normalized: bool = False) -> Tensor:
        """The reference's ``get_similarity_map``: per-name min-max over the patch grid, then bilinear to ``size``
        (default: the input size): ``[B, K_names, H, W]`` in ``[0, 1]``."""
        similarity, grid = self.surgery_similarity(images, normalized)
        maps = similarity[:, 1:].transpose(1, 2).reshape(similarity.shape[0], -1, *grid)  # [B, K_names, g_h, g_w]
        return resize_logits(minmax_normalize(maps), tuple(size or images.shape[-2:]))


class GEM(DenseSegmenter):
    """GEM: self-self attention on a parallel path without FFNs over the last ``depth`` blocks (GEM §3.1, spec §3).

    Protocol (GEM §4.1): short side 448, whole image, template ``a photo of a {}.``; the label map is the argmax of
    per-name min-max maps; on VOC the background is where ``softmax(100 · cos)`` of the foreground names stays below
    0.85 (``foreground_only`` + ``prob_thd`` in the config).

    Args:
        depth: blocks on the GEM path; ``None`` = 4 (GEM supp. §9, all reported experiments) or 6 with
            ``gem_package_defaults``.
        iterations: self-self iterations (1 in the paper, eq. 5-6).
        inverse_temperature: constant inverse temperature; ``None`` = adaptive (eq. 3-4).
        gem_package_defaults: what ``gem_torch`` users get: 6 blocks (``gem_depth=7``) and the demo's 448 x 448
            squash instead of the short-side resize (spec §3.3, §3.6).
        **kwargs: :class:`DenseSegmenter` arguments.
    """

    default_inference = {
        "resize": "short", "size": 448, "slide_crop": 0, "templates": "single", "score": "minmax",
        "logit_scale": 100.0,
    }  # fmt: skip
    default_pos_embed = "timm"

    def __init__(
        self,
        depth: int | None = None,
        iterations: int = 1,
        inverse_temperature: float | None = None,
        gem_package_defaults: bool = False,
        **kwargs: Any,
    ) -> None:
        self.depth = depth if depth is not None else (6 if gem_package_defaults else 4)
        self.iterations = iterations
        self.inverse_temperature = inverse_temperature
        self.gem_package_defaults = gem_package_defaults
        super().__init__(**kwargs)

    def method_inference_defaults(self) -> dict[str, Any]:
        defaults = dict(self.default_inference)
        if self.gem_package_defaults:
            defaults["resize"] = "square"
        return defaults

    def build_policy(self) -> ViTPolicy:
        check_depth(self.depth, self.clip.dense.num_blocks)
        attention = GEMAttention(self.iterations, self.inverse_temperature)
        return ViTPolicy(parallel=ParallelPathway(depth=self.depth, attention=attention), pos_embed=self.pos_embed)

    @torch.inference_mode()
    def encode_tokens(self, images: Tensor, normalized: bool = False, return_original: bool = True) -> ViTDenseOutput:
        """GEM and original-path tokens of ``images [B, 3, H, W]`` at their size (no protocol resize), as the
        package's ``visual(x)`` returning ``[feat_gem, feat_ori]`` (spec §3.2): ``tokens`` = ``ln_post`` + ``proj``
        of the GEM path ``[B, 1 + N, D]``, ``original`` = the same for the original path (``return_original``,
        which runs the last original block to its end). Images in ``[0, 255]`` or normalised (``normalized``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected images [B, 3, H, W], got shape {tuple(images.shape)}.")
        device = self.clip.pixel_mean.device
        pixels = images.to(device).float() if normalized else self.clip.normalize(images.to(device))
        policy = self.policy
        if return_original and policy.parallel is not None:
            policy = replace(policy, parallel=replace(policy.parallel, return_original=True))
        with self.autocast():
            return self.clip.dense.forward_dense(pixels, policy)


def check_depth(depth: int, num_blocks: int) -> None:
    """A parallel path needs ``1 <= depth <= num_blocks``."""
    if not 1 <= depth <= num_blocks:
        raise ValueError(f"Parallel-path depth must be in 1..{num_blocks} for a {num_blocks}-block ViT, got {depth}.")


#: Method name -> class (the ``method`` argument of :func:`ovs.methods.create_segmenter`).
METHODS: dict[str, type[DenseSegmenter]] = {
    "clip": VanillaCLIP,
    "maskclip": MaskCLIP,
    "clip_surgery": CLIPSurgery,
    "sclip": SCLIP,
    "gem": GEM,
    "clearclip": ClearCLIP,
    "naclip": NACLIP,
}

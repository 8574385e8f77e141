"""MaskInversion: optimise one token per mask so that its LeGrad map matches the mask (paper §3.2; spec §2-3).

The token ``θ_m`` lives in the joint image/text space, starts from the image's unnormalised projected CLS output and
is normalised at every use. Each step computes the LeGrad map of ``t̂_m = θ_m/‖θ_m‖`` (:mod:`.legrad`), resizes it
bilinearly to the mask, and minimises ``1 − (2 Σ E m + 1) / (Σ E + Σ m + 1) + α (1 − ĝᵀ t̂_m)`` with AdamW (betas
0.9 / 0.999, eps 1e-8, weight decay 0). The returned embedding is the raw ``θ`` after the last step; callers normalise.

Joint vs independent (``optimization``): the reference optimises all masks of an image **jointly** — one AdamW over
the stacked tokens and the loss averaged over masks — so each token's gradient is scaled by ``1/M``. Adam is invariant
to that scale except through its ``eps``, so ``joint`` (default, the published code) differs from optimising each
mask alone where gradients are tiny (small and empty masks). ``independent`` sums the per-mask losses instead, which
with a per-coordinate optimiser is exactly ``M`` separate single-mask runs, without a loop.

Gradient routes (``grad_mode``): ``naive`` (double back-propagation, the reference), ``decomposed`` (precomputed
``U``, :mod:`.decomposition`) or ``auto``, which picks the decomposition when ``masks × iterations`` reaches
:data:`AUTO_DECOMPOSE_AT` (the measured crossover, docs/performance.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs.backbones import CLIP, CLIPViT
from ovs.methods.maskinversion.decomposition import DEFAULT_CHUNK_BYTES, DecomposedScorer, NaiveScorer
from ovs.methods.maskinversion.legrad import encode_last_block, scores_to_map

GRAD_MODES = ("auto", "naive", "decomposed")
OPTIMIZATIONS = ("joint", "independent")
AUTO_DECOMPOSE_AT = 150
"""``auto`` uses the decomposition from this many mask-iterations on (15 masks at 10 iterations): the measured CPU
crossover for ViT-B/16 at 224 px lies between 10 and 50 masks, about 15 by linear interpolation
(docs/performance.md)."""


@dataclass(frozen=True)
class InversionConfig:
    """Hyper-parameters of MaskInversion (spec §3, §14).

    Attributes:
        iterations: optimisation steps (reference default 10).
        lr: AdamW learning rate (reference class default 0.1; 0.5 in the README's "Hyperparameters" variant).
        alpha: weight of the regulariser ``1 − cos(global, token)`` (0 for class retrieval, 5 for RefCOCO / RefCOCO+).
        image_size: input size: ``S`` (squash to ``S x S``, reference 448) or ``(H, W)``; multiples of the patch.
        grad_mode: ``auto``, ``naive`` or ``decomposed``.
        optimization: ``joint`` (reference) or ``independent``.
        chunk_bytes: memory budget of one chunk of per-mask attention gradients (decomposition).
    """

    iterations: int = 10
    lr: float = 0.1
    alpha: float = 0.0
    image_size: int | tuple[int, int] = 448
    grad_mode: str = "auto"
    optimization: str = "joint"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {self.grad_mode!r}.")
        if self.optimization not in OPTIMIZATIONS:
            raise ValueError(f"optimization must be one of {OPTIMIZATIONS}, got {self.optimization!r}.")
        if self.iterations < 1 or self.lr <= 0 or self.alpha < 0:
            raise ValueError("MaskInversion needs iterations >= 1, lr > 0 and alpha >= 0.")

    @property
    def size(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def resolve_grad_mode(self, num_masks: int) -> str:
        if self.grad_mode != "auto":
            return self.grad_mode
        return "decomposed" if num_masks * self.iterations >= AUTO_DECOMPOSE_AT else "naive"


@dataclass
class InversionResult:
    """Output of :func:`invert`.

    Attributes:
        embeddings: raw optimised tokens ``θ`` ``[M, d]`` (normalise before matching text).
        maps: LeGrad maps of the last step at mask resolution ``[M, h, w]`` (computed before the last update).
        losses: total loss per step ``[iterations]`` (mean over masks).
        grad_mode: the route that ran.
        seconds: ``{"precompute": ..., "iterations": ...}`` wall-clock split.
    """

    embeddings: Tensor
    maps: Tensor
    losses: Tensor
    grad_mode: str
    seconds: dict[str, float] = field(default_factory=dict)


def preprocess(clip: CLIP, image: Tensor, size: tuple[int, int]) -> Tensor:
    """Reference ``LePreprocess``: bicubic squash to ``size`` (no crop, so masks stay aligned), CLIP-normalise:
    ``uint8 [3, H, W] -> [1, 3, S_h, S_w]``."""
    patch = clip.dense.patch_size
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(f"MaskInversion image_size {size} must be a multiple of the patch size {patch}.")
    pixels = image[None].to(clip.pixel_mean)
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
    return clip.normalize(pixels)


def dice_loss(maps: Tensor, masks: Tensor) -> Tensor:
    """Soft Dice with smoothing 1 in numerator and denominator (paper eq. 3, reference code): ``[M, h, w] -> [M]``."""
    inter = (maps * masks).sum(dim=(1, 2))
    return 1 - (2 * inter + 1) / (maps.sum(dim=(1, 2)) + masks.sum(dim=(1, 2)) + 1)


def _check_vit(clip: CLIP) -> CLIPViT:
    if not isinstance(clip.dense, CLIPViT):
        raise NotImplementedError(
            f"MaskInversion needs a CLIP ViT with LeGrad hooks; {clip.model_name} is a {clip.architecture} model."
        )
    return clip.dense


def _check_masks(masks: Tensor) -> Tensor:
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {tuple(masks.shape)}.")
    masks = masks.float()
    if masks.numel() and (float(masks.min()) < 0 or float(masks.max()) > 1):
        raise ValueError("masks must be binary or soft masks in [0, 1] (a 0/255 PNG must be divided by 255).")
    return masks


def invert(clip: CLIP, image: Tensor, masks: Tensor, config: InversionConfig | None = None) -> InversionResult:
    """Localized embedding tokens of ``masks`` ``[M, H', W']`` (any resolution, values in ``[0, 1]``) in ``image``
    (``uint8 [3, H, W]``), MaskInversion paper §3.2 eq. 2-5 (spec §2-3).

    The CLIP model is only read: no parameter, buffer or flag changes. Needs autograd, so it cannot run inside
    ``torch.inference_mode`` (a Lightning ``Trainer`` must use ``inference_mode=False``).
    """
    config = config or InversionConfig()
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "MaskInversion optimises tokens with autograd and cannot run under torch.inference_mode; "
            "use Trainer(inference_mode=False) (trainer.inference_mode: false in the config) or leave inference mode."
        )
    vit = _check_vit(clip)
    masks = _check_masks(masks.to(clip.pixel_mean.device))
    num_masks = masks.shape[0]
    mode = config.resolve_grad_mode(num_masks)
    if num_masks == 0:
        empty = masks.new_zeros(0, clip.embed_dim)
        return InversionResult(empty, masks, torch.zeros(config.iterations), mode, {})
    start = time.perf_counter()
    state = encode_last_block(vit, preprocess(clip, image, config.size))
    with torch.enable_grad():
        scorer = DecomposedScorer(vit, state, config.chunk_bytes) if mode == "decomposed" else NaiveScorer(
            vit, state, num_masks
        )
        precompute = time.perf_counter() - start
        theta = state.global_embedding.expand(num_masks, -1).clone().requires_grad_(True)  # [M, d]
        optimizer = torch.optim.AdamW([theta], lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        global_hat = F.normalize(state.global_embedding, dim=-1)[0]  # [d]
        losses = []
        maps = masks.new_zeros(masks.shape)
        for _ in range(config.iterations):
            tokens = F.normalize(theta, dim=-1)  # [M, d]
            maps = scores_to_map(scorer(tokens), state.grid, state.patch)  # [M, S_h, S_w]
            if maps.shape[-2:] != masks.shape[-2:]:
                maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            per_mask = dice_loss(maps, masks) + config.alpha * (1 - tokens @ global_hat)  # [M]
            loss = per_mask.mean() if config.optimization == "joint" else per_mask.sum()
            (grad,) = torch.autograd.grad(loss, theta, retain_graph=scorer.retain_graph)
            theta.grad = grad
            optimizer.step()
            losses.append(float(per_mask.detach().mean()))
    seconds = {"precompute": precompute, "iterations": time.perf_counter() - start - precompute}
    return InversionResult(theta.detach(), maps.detach(), torch.tensor(losses), mode, seconds)

"""Parameterized similarity models (PSM) of MaskCLIP++ (paper §3.2, spec §4).

Every PSM maps the mask embeddings and the text embeddings of a vocabulary to class logits ``[N, K']``:

* :class:`NoPSM` — the original CLIP similarity, mean over templates of the scaled cosine similarities (spec §4.5);
  the "PSM removed" / "original CLIP" evaluation.
* :class:`LinearPSM` — the paper's Linear⟨E_m, E_t⟩: a T → W → 1 linear map over the template axis of the
  similarity tensor, shared by all classes (spec §4.3). It acts only along an axis that is not a modality, so it can
  keep the ordering of the original similarity ("consistency alignment", paper §3.2).
* :class:`PseudoTextPSM` — the paper's eq. 3, ⟨E_m, Norm(E_t + Attn(q(E_t), k(E_p), v(E_p)))⟩: each image gets its own
  pseudo-text classifier from its patch embeddings E_p (spec §4.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PSM_NAMES = ("none", "linear", "pseudo_text")
LINEAR_PSM_INITS = ("mean", "default")


@dataclass
class SimilarityInputs:
    """What a PSM may use (spec §4.2).

    Attributes:
        corrs: scaled cosine similarities ``[N, K', T]`` = ``logit_scale · ⟨m_n, E[k, t]⟩``.
        mask_embeddings: L2-normalised mask embeddings ``[N, D]``.
        text: L2-normalised per-template text embeddings ``[K', T, D]``.
        image_index: image of each mask ``[N]`` (int64).
        dense: per-location embeddings E_p ``[B, D, h, w]`` (ConvNeXt ``p_embs``), or ``None``.
        dense_valid: ``bool [B, h*w]`` grid cells inside each image's unpadded area, or ``None`` (all valid).
    """

    corrs: Tensor
    mask_embeddings: Tensor
    text: Tensor
    image_index: Tensor
    dense: Tensor | None = None
    dense_valid: Tensor | None = None


class NoPSM(nn.Module):
    """"PSM removed": the mean over templates of the scaled similarities, ``[N, K', T] -> [N, K']`` (spec §4.5)."""

    needs_dense: bool = False

    def forward(self, inputs: SimilarityInputs) -> Tensor:
        return inputs.corrs.mean(dim=-1)


class LinearPSM(nn.Module):
    """Linear⟨E_m, E_t⟩: Linear(T → W) then Linear(W → 1) over the template axis, no activation (spec §4.3).

    Args:
        num_templates: T (14 for ``fcclip14``, 1 for ``single``).
        width: hidden width W (768 in every reference config).
        init: ``"mean"`` (default) solves the second layer so that the initial map is exactly the template mean, i.e.
            the PSM starts as the identity on the original CLIP similarity and keeps its ranking ("consistency
            alignment" at step 0); ``"default"`` keeps PyTorch's random init of both layers, as the reference does —
            a random affine map of the template scores that can reverse the ranking at step 0 (spec §11 quirk Q3).
    """

    needs_dense: bool = False

    def __init__(self, num_templates: int, width: int = 768, init: str = "mean") -> None:
        super().__init__()
        if init not in LINEAR_PSM_INITS:
            raise ValueError(f"LinearPSM init must be one of {LINEAR_PSM_INITS}, got {init!r}.")
        if num_templates < 1 or width < num_templates:
            raise ValueError(f"LinearPSM needs 1 <= num_templates <= width, got T={num_templates}, W={width}.")
        self.expand = nn.Linear(num_templates, width)
        self.reduce = nn.Linear(width, 1)
        if init == "mean":
            self.init_as_template_mean()

    @torch.no_grad()
    def init_as_template_mean(self) -> None:
        """Set ``reduce`` so that ``reduce(expand(s)) = mean_t(s)`` for every input, keeping ``expand`` random.

        With ``A = expand.weight [W, T]`` (full column rank almost surely) and ``1/T · 1ᵀ`` the template mean,
        ``reduce.weight = 1/T · 1ᵀ A⁺`` gives ``reduce.weight · A = 1/T · 1ᵀ`` and ``reduce.bias = -reduce.weight ·
        expand.bias`` cancels the first bias. The random hidden features are kept, so the hidden units stay distinct.
        """
        a = self.expand.weight.double()  # [W, T]
        target = torch.full((1, a.shape[1]), 1.0 / a.shape[1], dtype=torch.float64)  # [1, T]
        weight = target @ torch.linalg.pinv(a)  # [1, W]
        self.reduce.weight.copy_(weight.to(self.reduce.weight.dtype))
        self.reduce.bias.copy_(-(weight @ self.expand.bias.double()).to(self.reduce.bias.dtype))

    def forward(self, inputs: SimilarityInputs) -> Tensor:
        return self.reduce(self.expand(inputs.corrs)).squeeze(-1)  # [N, K', T] -> [N, K']


class PseudoTextPSM(nn.Module):
    """⟨E_m, Norm(E_t + P_t)⟩ with P_t = Attention(q(E_t), k(E_p), v(E_p)) (paper eq. 3, spec §4.4).

    Per image: the patch embeddings are L2-normalised and projected (``img_proj``, no bias); the template-averaged,
    re-normalised class embeddings attend to them with an 8-head ``nn.MultiheadAttention`` (attention dropout 0.1);
    ``Ê = LayerNorm(E_t + P_t)`` is not re-normalised, so the LayerNorm gain acts as a learnable temperature.
    Grid cells outside an image's unpadded area are masked out of the keys (the reference attends to them; with
    batch 1 and size-divisible inputs both agree).

    Args:
        dim: embedding dimension D.
        num_heads: attention heads (8).
        dropout: attention-probability dropout (0.1).
    """

    needs_dense: bool = True

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"PseudoTextPSM: dim {dim} is not divisible by num_heads {num_heads}.")
        self.img_proj = nn.Linear(dim, dim, bias=False)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, inputs: SimilarityInputs) -> Tensor:
        if inputs.dense is None:
            raise ValueError("PseudoTextPSM needs the dense patch embeddings E_p (SimilarityInputs.dense).")
        b = inputs.dense.shape[0]
        patches = F.normalize(inputs.dense.flatten(2).transpose(1, 2), dim=-1)  # [B, hw, D]
        patches = self.img_proj(patches)
        text = F.normalize(inputs.text.mean(dim=1), dim=-1)  # [K', D]
        queries = text.unsqueeze(0).expand(b, -1, -1)  # [B, K', D]
        padding = None if inputs.dense_valid is None else ~inputs.dense_valid  # [B, hw], True = ignore
        pseudo, _ = self.attention(queries, patches, patches, key_padding_mask=padding, need_weights=False)
        classifier = self.norm(queries + pseudo)  # [B, K', D]
        return torch.einsum("nd,nkd->nk", inputs.mask_embeddings, classifier[inputs.image_index])  # [N, K']


def build_psm(
    name: str,
    dim: int,
    num_templates: int,
    width: int = 768,
    num_heads: int = 8,
    dropout: float = 0.1,
    linear_init: str = "mean",
) -> NoPSM | LinearPSM | PseudoTextPSM:
    """The PSM called ``name`` (``"none"``, ``"linear"``, ``"pseudo_text"``), spec §4.6."""
    if name == "none":
        return NoPSM()
    if name == "linear":
        return LinearPSM(num_templates, width, linear_init)
    if name == "pseudo_text":
        return PseudoTextPSM(dim, num_heads, dropout)
    raise ValueError(f"Unknown PSM {name!r}; choose one of {PSM_NAMES}.")


def clip_logit_scale(raw: Tensor | float) -> float:
    """The frozen CLIP logit scale as a constant: ``min(exp(raw), 100)`` (spec §2.2, quirk Q4)."""
    value = float(raw.detach().float().item()) if isinstance(raw, Tensor) else float(raw)
    return min(math.exp(value), 100.0)

"""Python API: ``mask_embeddings(image, masks) -> [M, d]`` localized embeddings with MaskInversion or a baseline.

>>> import ovs
>>> emb = ovs.mask_embeddings("photo.jpg", masks, method="maskinversion")     # masks: [M, H, W]
>>> text = ovs.build_text_classifier(ovs.create_clip("ViT-B-16", "openai"), [["cat"], ["dog"]], "single")
>>> (emb @ text.embeddings.T).argmax(1)                                       # class of each mask

The CLIP model is built once per (model, weights, device) and cached. Integer and boolean masks are binarised
(``> 0``, so 0/255 PNGs work); float masks must lie in ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ovs.backbones import CLIP, create_clip
from ovs.methods.api import ImageInput, load_image
from ovs.methods.maskinversion.baselines import EMBEDDERS, build_embedder
from ovs.methods.maskinversion.inversion import InversionConfig

MasksInput = Tensor | np.ndarray | list[Any]

_CLIPS: dict[tuple[str, str | None, str, bool | None], CLIP] = {}
_CACHE_SIZE = 2


def load_masks(masks: MasksInput, size: tuple[int, int]) -> Tensor:
    """``float [M, H, W]`` in ``[0, 1]`` from a tensor / array ``[M, H, W]`` or ``[H, W]`` or a list of ``[H, W]``."""
    if isinstance(masks, list):
        masks = torch.stack([torch.as_tensor(np.asarray(m)) for m in masks]) if masks else torch.zeros(0, *size)
    masks = torch.as_tensor(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[-2:]) != tuple(size):
        raise ValueError(f"masks must be [M, {size[0]}, {size[1]}] (the image size), got {tuple(masks.shape)}.")
    if not masks.is_floating_point():
        return (masks > 0).float()
    if masks.numel() and (float(masks.min()) < 0 or float(masks.max()) > 1):
        raise ValueError("float masks must lie in [0, 1]; pass 0/255 masks as uint8 or divide them by 255.")
    return masks.float()


def get_clip(model_name: str, pretrained: str | None, device: torch.device, force_quick_gelu: bool | None) -> CLIP:
    """A frozen CLIP in eval mode, cached."""
    key = (model_name, None if pretrained is None else str(pretrained), str(device), force_quick_gelu)
    clip = _CLIPS.pop(key, None)
    if clip is None:
        clip = create_clip(model_name, pretrained, force_quick_gelu=force_quick_gelu).to(device).eval()
        clip.requires_grad_(False)
    _CLIPS[key] = clip  # most recent last
    while len(_CLIPS) > _CACHE_SIZE:
        _CLIPS.pop(next(iter(_CLIPS)))
    return clip


def mask_embeddings(
    image: ImageInput,
    masks: MasksInput,
    method: str = "maskinversion",
    model_name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    *,
    device: str | torch.device | None = None,
    force_quick_gelu: bool | None = None,
    **options: Any,
) -> Tensor:
    """L2-normalised localized embeddings ``[M, d]`` of ``masks`` in ``image`` (MaskInversion paper §3).

    Args:
        image: path, PIL image, ``uint8 [H, W, 3]`` array or ``[3, H, W]`` tensor in ``[0, 255]``.
        masks: ``[M, H, W]`` (or one ``[H, W]``) at the image size: bool / integer (binarised) or float in [0, 1].
        method: ``maskinversion`` or a baseline (``cls``, ``crop``, ``masked_crop``, ``red_circle``, ``fgvp``).
        model_name, pretrained, force_quick_gelu: the open_clip model (offline weights, ``None`` = random).
        device: default CUDA when available.
        **options: :class:`~ovs.methods.maskinversion.InversionConfig` fields for MaskInversion (``iterations``,
            ``lr``, ``alpha``, ``image_size``, ``grad_mode``, ``optimization``), or the baseline's options.
    """
    if method not in EMBEDDERS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(EMBEDDERS)}.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clip = get_clip(model_name, pretrained, device, force_quick_gelu)
    pixels = load_image(image).to(device)
    query = load_masks(masks, tuple(pixels.shape[-2:])).to(device)
    if method == "maskinversion":
        embedder = build_embedder(clip, method, InversionConfig(**options))
    else:
        embedder = build_embedder(clip, method, **options)
        query = query > 0.5
    return embedder.embed(pixels, query).cpu()


def clear_cache() -> None:
    """Drop the cached CLIP models."""
    _CLIPS.clear()

"""Python API: ``segment(image, class_names) -> SegmentationResult`` with any training-free method.

>>> from ovs.methods import segment
>>> result = segment("street.jpg", ["car", "person, pedestrian", "road", "sky"], method="sclip")
>>> result.labels.shape, result.logits.shape  # [H, W], [K, H, W]

The segmenter (CLIP weights included) is built once per (method, model, weights, method arguments, device) and cached;
text embeddings are cached per vocabulary. Protocol settings (``size``, ``slide_crop``, ``logit_scale``,
``prob_thd`` ...: see :class:`~ovs.inference.InferenceConfig`) are keyword arguments of every call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ovs.data.io import read_image
from ovs.methods.base import DenseSegmenter
from ovs.methods.training_free import METHODS

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray | Tensor
ClassNamesInput = str | list[str] | list[list[str]]

_CACHE: dict[tuple[Any, ...], DenseSegmenter] = {}
_CACHE_SIZE = 4


@dataclass
class SegmentationResult:
    """Output of :func:`segment`.

    Attributes:
        labels: ``int64 [H, W]`` class index per pixel (original image size).
        logits: ``[K, H, W]`` per-class scores whose argmax gives ``labels`` outside the background rule
            (probabilities, or GEM's min-max maps; see :class:`~ovs.inference.PostProcessed`).
        class_names: display name of every class (first synonym).
    """

    labels: Tensor
    logits: Tensor
    class_names: list[str]


def load_image(image: ImageInput) -> Tensor:
    """An RGB ``uint8 [3, H, W]`` tensor from a path, a PIL image, an ``HxWx3`` ``uint8`` array or a tensor
    (``[3, H, W]`` ``uint8``, or float in ``[0, 255]``)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file {path} does not exist.")
        return read_image(path)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"A numpy image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}.")
        return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"A tensor image must be [3, H, W] RGB in [0, 255], got shape {tuple(image.shape)}.")
        return image
    raise TypeError(f"Unsupported image type {type(image).__name__}; pass a path, PIL image, numpy array or tensor.")


def create_segmenter(
    method: str = "sclip",
    model_name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    force_quick_gelu: bool | None = None,
    device: str | torch.device | None = None,
    method_args: dict[str, Any] | None = None,
    **protocol: Any,
) -> DenseSegmenter:
    """Build a training-free segmenter (``clip``, ``maskclip``, ``clip_surgery``, ``sclip``, ``gem``,
    ``clearclip``, ``naclip``) in eval mode on ``device`` (default: CUDA when available).

    Args:
        method_args: method constructor arguments (e.g. ``{"depth": 6}`` for GEM, ``{"keep_residual_ffn": False}``
            for SCLIP).
        **protocol: :class:`~ovs.inference.InferenceConfig` overrides.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    segmenter = METHODS[method](
        model_name=model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu, inference=protocol or None,
        **(method_args or {}),
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return segmenter.to(device).eval()


def segment(
    image: ImageInput,
    class_names: ClassNamesInput,
    method: str = "sclip",
    model_name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    *,
    background_index: int | None = None,
    force_quick_gelu: bool | None = None,
    device: str | torch.device | None = None,
    method_args: dict[str, Any] | None = None,
    **protocol: Any,
) -> SegmentationResult:
    """Segment one image into ``class_names`` with a training-free method.

    Args:
        image: path, PIL image, ``uint8 [H, W, 3]`` array or ``[3, H, W]`` tensor in ``[0, 255]``.
        class_names: list of classes (``"cat, kitty"`` gives synonyms, max over names), a list of synonym lists, or
            a class-name file (packaged name such as ``"sclip_voc21"`` or a path).
        method, model_name, pretrained, force_quick_gelu, device, method_args: see :func:`create_segmenter`; the
            built segmenter is cached.
        background_index: class id of the background, needed for ``prob_thd`` / ``foreground_only``.
        **protocol: :class:`~ovs.inference.InferenceConfig` overrides for this call (e.g. ``size=448``,
            ``slide_crop=0``, ``prob_thd=0.1``).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args_key = tuple(sorted((method_args or {}).items()))
    key = (method, model_name, None if pretrained is None else str(pretrained), force_quick_gelu, str(device), args_key)
    segmenter = _CACHE.pop(key, None)
    if segmenter is None:
        segmenter = create_segmenter(method, model_name, pretrained, force_quick_gelu, device, method_args)
    _CACHE[key] = segmenter  # most recent last
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    segmenter.configure_protocol(**protocol)
    segmenter.set_vocabulary(class_names, background_index)
    pixels = load_image(image)
    result = segmenter.segment([pixels])[0]
    names = [synonyms[0] for synonyms in segmenter.vocabulary.class_names]
    return SegmentationResult(labels=result.labels.cpu(), logits=result.scores.cpu(), class_names=names)


def clear_cache() -> None:
    """Drop the cached segmenters (and their CLIP weights)."""
    _CACHE.clear()

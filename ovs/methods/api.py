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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ovs.backbones import CLIP
from ovs.data.io import image_to_tensor, read_image
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


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SUPPORTED = "a local image file path, a PIL image, an [H, W, 3] numpy array or a [3, H, W] tensor"


def _scale_float(image: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    """A float ``[3, H, W]`` image mapped from ``value_range`` (default ``(0, 255)``) to ``[0, 255]``."""
    low, high = (0.0, 255.0) if value_range is None else (float(value_range[0]), float(value_range[1]))
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}.")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("The float image contains NaN or infinite values.")
    lo, hi = float(image.min()), float(image.max())
    if value_range is None and 0.0 < hi <= 1.0:
        raise ValueError(
            f"The float image lies in [{lo:.3g}, {hi:.3g}], which looks like [0, 1]; ovs expects [0, 255]. Pass "
            "value_range=(0, 1) (or multiply by 255); pass value_range=(0, 255) if it really is a very dark image."
        )
    tolerance = 1e-3 * (high - low)
    if lo < low - tolerance or hi > high + tolerance:
        raise ValueError(f"The float image lies in [{lo:.3g}, {hi:.3g}], outside value_range ({low:g}, {high:g}).")
    if (low, high) == (0.0, 255.0):
        return image
    return (image.float() - low) * (255.0 / (high - low))


def load_image(image: ImageInput, value_range: tuple[float, float] | None = None) -> Tensor:
    """An RGB ``[3, H, W]`` image in ``[0, 255]`` (``uint8``, or float for float inputs).

    Accepted: a local file path (EXIF orientation applied, 16-bit PNGs scaled, see :func:`ovs.data.io.read_image`),
    a PIL image, a ``uint8 [H, W, 3]`` array, a ``[3, H, W]`` ``uint8`` tensor, or a float ``[H, W, 3]`` array /
    ``[3, H, W]`` tensor whose values lie in ``value_range`` (default ``(0, 255)``; a float image within ``[0, 1]``
    needs an explicit ``value_range=(0, 1)``, it is rejected otherwise). URLs and directories are rejected with a
    message naming what is supported (ovs never downloads).
    """
    if isinstance(image, (str, os.PathLike)):
        text = os.fspath(image)
        if _URL.match(str(text)):
            raise ValueError(f"{text!r} is a URL; ovs never downloads. Download the image and pass its path, or pass "
                             f"{_SUPPORTED}.")
        path = Path(text)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory; pass one image file ({_SUPPORTED}). To segment a "
                                    "folder, call segment() per file.")
        if not path.is_file():
            raise FileNotFoundError(f"Image file {path} does not exist; pass {_SUPPORTED}.")
        return read_image(path)
    if isinstance(image, Image.Image):
        return image_to_tensor(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"A numpy image must be [H, W, 3] RGB (uint8 or float), got shape {image.shape}.")
        if image.dtype == np.uint8:
            return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"A numpy image must be uint8 [H, W, 3] or float with value_range, got {image.dtype}.")
        return _scale_float(torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(), value_range)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"A tensor image must be [3, H, W] RGB, got shape {tuple(image.shape)}.")
        if image.is_floating_point():
            return _scale_float(image, value_range)
        if image.dtype != torch.uint8:
            raise ValueError(f"An integer tensor image must be uint8 in [0, 255], got {image.dtype}.")
        return image
    raise TypeError(f"Unsupported image type {type(image).__name__}; pass {_SUPPORTED}.")


def create_segmenter(
    method: str = "sclip",
    model_name: str = "ViT-B-16",
    pretrained: str | None = "openai",
    force_quick_gelu: bool | None = None,
    device: str | torch.device | None = None,
    method_args: dict[str, Any] | None = None,
    clip: CLIP | None = None,
    **protocol: Any,
) -> DenseSegmenter:
    """Build a training-free segmenter (``clip``, ``maskclip``, ``clip_surgery``, ``sclip``, ``gem``,
    ``clearclip``, ``naclip``) in eval mode on ``device`` (default: the device of ``clip`` if given, else CUDA when
    available).

    Args:
        method_args: method constructor arguments (e.g. ``{"depth": 6}`` for GEM, ``{"keep_residual_ffn": False}``
            for SCLIP).
        clip: an already-built :class:`~ovs.backbones.CLIP` (e.g. ``ovs.create_clip(...)`` with weights you also feed
            to another implementation) used as is, without loading weights; ``model_name`` / ``pretrained`` are
            then ignored. Its parameters are shared, not copied.
        **protocol: :class:`~ovs.inference.InferenceConfig` overrides.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if clip is not None and not isinstance(clip, CLIP):
        raise TypeError(f"clip must be an ovs CLIP from ovs.create_clip(...), got {type(clip).__name__}.")
    if clip is not None:
        model_name, pretrained = clip.model_name, None if clip.pretrained is None else str(clip.pretrained)
    segmenter = METHODS[method](
        model_name=model_name, pretrained=pretrained, force_quick_gelu=force_quick_gelu, inference=protocol or None,
        clip=clip, **(method_args or {}),
    )
    if device is None:
        device = clip.pixel_mean.device if clip is not None else ("cuda" if torch.cuda.is_available() else "cpu")
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
    clip: CLIP | None = None,
    value_range: tuple[float, float] | None = None,
    **protocol: Any,
) -> SegmentationResult:
    """Segment one image into ``class_names`` with a training-free method.

    Args:
        image: local file path, PIL image, ``[H, W, 3]`` array or ``[3, H, W]`` tensor (see :func:`load_image`).
        class_names: list of classes (``"cat, kitty"`` gives synonyms, max over names), a list of synonym lists, or
            a class-name file (packaged name such as ``"sclip_voc21"`` or a path); validated like a file (no
            duplicate class).
        method, model_name, pretrained, force_quick_gelu, device, method_args, clip: see :func:`create_segmenter`;
            the built segmenter is cached (per ``clip`` object when one is given).
        background_index: class id of the background, needed for ``prob_thd`` / ``foreground_only``.
        value_range: value range of a float image (e.g. ``(0, 1)``); default ``(0, 255)``.
        **protocol: :class:`~ovs.inference.InferenceConfig` overrides for this call (e.g. ``size=448``,
            ``slide_crop=0``, ``prob_thd=0.1``).
    """
    pixels = load_image(image, value_range)
    if device is None and clip is not None:
        device = clip.pixel_mean.device
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args_key = tuple(sorted((method_args or {}).items()))
    weights = ("clip", id(clip)) if clip is not None else (model_name, None if pretrained is None else str(pretrained))
    key = (method, *weights, force_quick_gelu, str(device), args_key)
    segmenter = _CACHE.pop(key, None)
    if segmenter is None or (clip is not None and segmenter.clip is not clip):
        segmenter = create_segmenter(method, model_name, pretrained, force_quick_gelu, device, method_args, clip)
    _CACHE[key] = segmenter  # most recent last
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    segmenter.configure_protocol(**protocol)
    segmenter.set_vocabulary(class_names, background_index)
    result = segmenter.segment([pixels])[0]
    names = [synonyms[0] for synonyms in segmenter.vocabulary.class_names]
    return SegmentationResult(labels=result.labels.cpu(), logits=result.scores.cpu(), class_names=names)


def clear_cache() -> None:
    """Drop the cached segmenters (and their CLIP weights)."""
    _CACHE.clear()

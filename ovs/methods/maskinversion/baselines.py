"""Region embedders: MaskInversion and the paper's baselines in one interface (maskinversion spec §8).

Every embedder maps one image ``uint8 [3, H, W]`` and its query masks ``bool [M, H, W]`` to L2-normalised embeddings
``[M, d]`` in the joint space, so the retrieval metrics are shared. The baselines build one ``S x S`` image per mask
(``S`` = the model's native input size) with tensor ops and embed them in batches with the frozen CLIP:

* ``cls`` (CLIP*): the global embedding of the image squashed to ``S x S``, the same for every mask.
* ``crop``: the mask's tight box ``(x0, y0, x1 + 1, y1 + 1)`` (inclusive max + 1; an empty mask takes the whole image),
  optionally grown by ``crop_expand`` around its centre, cropped and resized to ``S x S`` (bilinear).
* ``masked_crop`` (Table 7, RIS code): pixels outside the mask replaced by the fill colour (ImageNet mean by default),
  then cropped as ``crop``; ``masked_full_image`` keeps the whole filled image instead (the paper's §4.2 wording).
* ``red_circle`` (Shtedritski et al. via FGVP): shortest side resized to ``S``, a red (255, 0, 0) ellipse outline of
  2 px inscribed in the box, then squashed to ``S x S``.
* ``fgvp`` (FGVP "blur reverse mask"): shortest side resized to ``S``, the whole image blurred with PIL
  ``GaussianBlur(radius=100)``, the sharp pixels pasted back inside the mask, squashed to ``S x S``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor

from ovs.backbones import CLIP
from ovs.methods.maskinversion.inversion import InversionConfig, invert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
FILLS = {"imagenet_mean": IMAGENET_MEAN, "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
BASELINES = ("cls", "crop", "masked_crop", "red_circle", "fgvp")
EMBEDDERS = ("maskinversion", *BASELINES)


class RegionEmbedder(Protocol):
    """``embed(image uint8 [3, H, W], masks bool [M, H, W]) -> [M, d]`` L2-normalised (spec §8 [design])."""

    def embed(self, image: Tensor, masks: Tensor) -> Tensor: ...


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes ``(x0, y0, x1 + 1, y1 + 1)`` of ``bool [M, H, W]`` masks, ``float [M, 4]``; empty masks get the
    whole image ``(0, 0, W, H)``."""
    m, h, w = masks.shape
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # [M, W], [M, H]
    ar_w = torch.arange(w, device=masks.device)
    ar_h = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    whole = torch.tensor([0.0, 0.0, w, h], device=masks.device)
    return torch.where(cols.any(dim=1, keepdim=True), boxes, whole)


def expand_boxes(boxes: Tensor, factor: float, height: int, width: int) -> Tensor:
    """Grow boxes ``[M, 4]`` by ``factor`` around their centres, clipped to the image."""
    if factor == 1.0:
        return boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * factor / 2
    limit = torch.tensor([width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.cat([(centre - half).clamp(min=0), torch.minimum(centre + half, limit)], dim=1)


def crop_resize(images: Tensor, boxes: Tensor, size: int, image_index: Tensor | None = None) -> Tensor:
    """Crop each box of ``images`` ``[B, 3, H, W]`` and resize it to ``size x size``, exactly
    ``F.interpolate(crop, size, mode="bilinear", align_corners=False)`` of the crop (sources clamped to the crop's
    pixel centres, so nothing outside the box leaks in), for all boxes in one ``grid_sample``: ``[M, 3, size, size]``.
    """
    m = boxes.shape[0]
    h, w = images.shape[-2:]
    steps = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size  # [S]
    lo, hi = boxes[:, :2, None], boxes[:, 2:, None]  # [M, 2, 1]: (x0, y0), (x1, y1)
    coords = lo - 0.5 + steps * (hi - lo)  # [M, 2, S] source pixel centres
    coords = torch.minimum(torch.maximum(coords, lo), hi - 1)
    gx = coords[:, 0] / max(w - 1, 1) * 2 - 1  # [M, S]
    gy = coords[:, 1] / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(m, size, size), gy[:, :, None].expand(m, size, size)], dim=-1)
    index = torch.zeros(m, dtype=torch.long, device=boxes.device) if image_index is None else image_index
    return F.grid_sample(images.float()[index], grid, mode="bilinear", align_corners=True)


def resize_short_side(image: Tensor, size: int) -> Tensor:
    """Bilinear resize so that the shortest side is ``size``: ``[C, H, W] -> [C, h, w]``."""
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    out = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image[None].float(), size=out, mode="bilinear", align_corners=False, antialias=True)[0]


def ellipse_outline(boxes: Tensor, height: int, width: int, thickness: float = 2.0) -> Tensor:
    """Outlines ``bool [M, H, W]`` of the ellipses inscribed in ``boxes`` (centre = box centre, semi-axes = half the
    box sides), a band of ``thickness`` pixels centred on the curve (pixel centres at ``+0.5``)."""
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    cx, cy = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None, None], ((boxes[:, 1] + boxes[:, 3]) / 2)[:, None, None]
    a, b = ((boxes[:, 2] - boxes[:, 0]) / 2)[:, None, None], ((boxes[:, 3] - boxes[:, 1]) / 2)[:, None, None]
    dx, dy = xs[None, None, :] - cx, ys[None, :, None] - cy  # [M, 1, W], [M, H, 1]
    outer = (dx / (a + thickness / 2)) ** 2 + (dy / (b + thickness / 2)) ** 2 <= 1
    inner_a, inner_b = (a - thickness / 2).clamp(min=1e-6), (b - thickness / 2).clamp(min=1e-6)
    inner = (dx / inner_a) ** 2 + (dy / inner_b) ** 2 < 1
    return outer & ~inner


def gaussian_blur_pil(image: Tensor, radius: float) -> Tensor:
    """PIL ``GaussianBlur(radius)`` of a ``[3, H, W]`` image in ``[0, 255]`` (FGVP's blur), as float."""
    array = image.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    blurred = Image.fromarray(array).filter(ImageFilter.GaussianBlur(radius=radius))
    return torch.from_numpy(np.asarray(blurred).copy()).permute(2, 0, 1).float().to(image.device)


class BaselineEmbedder:
    """One of the spec §8 baselines with a frozen CLIP.

    Args:
        clip: the model (``encode_image`` at its native input size).
        kind: ``cls``, ``crop``, ``masked_crop``, ``red_circle`` or ``fgvp``.
        crop_expand: context margin of ``crop`` / ``masked_crop`` boxes (1.0 = tight).
        fill: ``masked_crop`` fill colour (``imagenet_mean``, ``black``, ``gray``).
        masked_full_image: ``masked_crop`` without cropping (the paper's §4.2 description).
        thickness: ``red_circle`` line width in pixels.
        blur_radius: ``fgvp`` PIL Gaussian blur radius.
        batch_size: images per ``encode_image`` call.
    """

    def __init__(
        self,
        clip: CLIP,
        kind: str,
        crop_expand: float = 1.0,
        fill: str = "imagenet_mean",
        masked_full_image: bool = False,
        thickness: float = 2.0,
        blur_radius: float = 100.0,
        batch_size: int = 64,
    ) -> None:
        if kind not in BASELINES:
            raise ValueError(f"Unknown baseline {kind!r}; choose one of {BASELINES}.")
        if fill not in FILLS:
            raise ValueError(f"Unknown fill {fill!r}; choose one of {tuple(FILLS)}.")
        self.clip = clip
        self.kind = kind
        self.crop_expand = crop_expand
        self.fill = fill
        self.masked_full_image = masked_full_image
        self.thickness = thickness
        self.blur_radius = blur_radius
        self.batch_size = batch_size
        size = clip.model.visual.image_size
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)

    def _squash(self, images: Tensor) -> Tensor:
        return F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True)

    def transform(self, image: Tensor, masks: Tensor) -> Tensor:
        """The images the baseline embeds, ``[M, 3, S, S]`` in ``[0, 255]`` (``[1, 3, S, S]`` for ``cls``)."""
        image = image.float()
        masks = masks.bool().to(image.device)
        h, w = image.shape[-2:]
        if self.kind == "cls":
            return self._squash(image[None])
        if self.kind in ("crop", "masked_crop"):
            boxes = expand_boxes(mask_boxes(masks), self.crop_expand, h, w)
            source = image[None]
            index = None
            if self.kind == "masked_crop":
                fill = torch.tensor(FILLS[self.fill], device=image.device).view(1, 3, 1, 1) * 255
                source = torch.where(masks[:, None], image[None], fill)  # [M, 3, H, W]
                if self.masked_full_image:
                    return self._squash(source)
                index = torch.arange(len(masks), device=image.device)
            return crop_resize(source, boxes, self.size, index)
        resized = resize_short_side(image, self.size)  # [3, h, w]
        rh, rw = resized.shape[-2:]
        if self.kind == "red_circle":
            scale = torch.tensor([rw / w, rh / h, rw / w, rh / h], device=image.device)
            outline = ellipse_outline(mask_boxes(masks) * scale, rh, rw, self.thickness)  # [M, h, w]
            red = torch.tensor([255.0, 0.0, 0.0], device=image.device).view(1, 3, 1, 1)
            return self._squash(torch.where(outline[:, None], red, resized[None]))
        small = F.interpolate(masks[:, None].float(), size=(rh, rw), mode="nearest")[:, 0].bool()  # [M, h, w]
        blurred = gaussian_blur_pil(resized, self.blur_radius)
        return self._squash(torch.where(small[:, None], resized[None], blurred[None]))

    @torch.no_grad()
    def embed(self, image: Tensor, masks: Tensor) -> Tensor:
        """L2-normalised embeddings ``[M, d]``."""
        if masks.shape[0] == 0:
            return torch.zeros(0, self.clip.embed_dim, device=self.clip.pixel_mean.device)
        images = self.transform(image.to(self.clip.pixel_mean.device), masks)
        out = torch.cat([self.clip.encode_image(chunk) for chunk in images.split(self.batch_size)])
        return out.expand(masks.shape[0], -1) if self.kind == "cls" else out


class MaskInversionEmbedder:
    """MaskInversion tokens (:func:`~ovs.methods.maskinversion.invert`), L2-normalised."""

    def __init__(self, clip: CLIP, config: InversionConfig | None = None) -> None:
        self.clip = clip
        self.config = config or InversionConfig()
        self.last_result = None

    def embed(self, image: Tensor, masks: Tensor) -> Tensor:
        result = invert(self.clip, image, masks, self.config)
        self.last_result = result
        return F.normalize(result.embeddings, dim=-1)


def build_embedder(clip: CLIP, kind: str, config: InversionConfig | None = None, **options: object) -> RegionEmbedder:
    """``maskinversion`` (with ``config``) or one of :data:`BASELINES` (with its ``options``)."""
    if kind == "maskinversion":
        return MaskInversionEmbedder(clip, config)
    return BaselineEmbedder(clip, kind, **options)  # type: ignore[arg-type]

"""Image transforms on tensors: test-time resizing and the two MaskCLIP++ training augmentations.

Test time (training-free.md §9.1, maskclippp.md §7.5 "Test"): :func:`resize_short_side`, :func:`resize_long_side`,
:func:`resize_square` resize the image only (bilinear, ``antialias=False`` like cv2 / mmcv), labels keep their
original size and ``meta`` keeps the original height/width.

Training (maskclippp.md §7.5), on a sample dict whose ``image`` (``uint8 [3, H, W]``), ``sem_seg`` (``int64
[H, W]``), ``pan_seg`` (``int64 [H, W]``) and ``masks`` (``bool [N, H, W]``) are transformed consistently:

* COCO-Panoptic large-scale jitter (:func:`lsj_transform`): RandomFlip -> ResizeScale(0.1, 2.0) -> FixedSizeCrop
  with padding (image 128, ``sem_seg`` IGNORE_INDEX, ``pan_seg`` 0 = void, masks False);
* COCO-Stuff (:func:`coco_stuff_transform`): ResizeShortestEdge(choice of int(0.1 x S), x = 3..19, max 4096) ->
  RandomCrop(S x S) -> ColorAugSSD -> RandomFlip, then padding to S x S so that crops can be stacked.

Randomness comes from an optional ``torch.Generator`` (``None`` = the global RNG, which DataLoader workers seed).
Images are resized bilinearly with antialiasing during training (detectron2 resizes uint8 images with PIL, whose
bilinear filter widens its support when downscaling); label maps and masks use nearest neighbour with pixel-centre
sampling (PIL ``NEAREST``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ovs.data.constants import IGNORE_INDEX

Sample = dict[str, Any]

IMAGE_PAD_VALUE = 128
"""Pixel value of padded image regions (detectron2 FixedSizeCrop ``pad_value``)."""

_LABEL_PAD = {"sem_seg": IGNORE_INDEX, "pan_seg": 0, "masks": False}
"""Padding value of each label key: ignore for semantic labels, void for panoptic ids, empty for masks."""


# ----------------------------------------------------------------------------------------------------------------
# Resizing primitives


def resize_image(image: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of ``[3, H, W]`` or ``[B, 3, H, W]`` to ``size = (h, w)``; uint8 in -> uint8 out (rounded)."""
    if image.ndim not in (3, 4):
        raise ValueError(f"Expected an image [3, H, W] or [B, 3, H, W], got shape {tuple(image.shape)}.")
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image if image.ndim == 4 else image[None]  # [B, 3, H, W]
    out = F.interpolate(batched.float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)
    if image.dtype == torch.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    else:
        out = out.to(image.dtype)
    return out if image.ndim == 4 else out[0]


def resize_nearest(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``[..., H, W]`` (any dtype) sampling at pixel centres, like PIL ``NEAREST``."""
    in_h, in_w = label.shape[-2:]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return label
    rows = ((torch.arange(out_h, dtype=torch.float64) + 0.5) * (in_h / out_h)).floor().long().clamp_(max=in_h - 1)
    cols = ((torch.arange(out_w, dtype=torch.float64) + 0.5) * (in_w / out_w)).floor().long().clamp_(max=in_w - 1)
    return label[..., rows, :][..., cols]


def short_side_size(
    height: int, width: int, size: int, max_long_side: int | None = None, truncate: bool = False
) -> tuple[int, int]:
    """Output ``(h, w)`` with the short side ``size`` (long side capped at ``max_long_side``).

    The scale factor is ``min(size / short, max_long_side / long)``, as mmcv ``imrescale`` with ``keep_ratio`` and
    detectron2 ``ResizeShortestEdge``; sizes are ``int(x * f + 0.5)`` (rounded half up). ``truncate`` gives the
    MaskCLIP++ encoders' test-time resize instead (maskclippp.md §3.1): short side exactly ``size``, long side
    ``int(long * size / short)``, e.g. 416 x 320 -> 665 x 512 (rounding half up gives 666 x 512).
    """
    if truncate:
        if max_long_side is not None:
            raise ValueError("truncate=True follows MaskCLIP++'s uncapped resize; max_long_side must be None.")
        short = min(height, width)
        if height <= width:
            return size, int(width * size / short)
        return int(height * size / short), size
    scale = size / min(height, width)
    if max_long_side is not None:
        scale = min(scale, max_long_side / max(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_short_side(image: torch.Tensor, size: int, max_long_side: int | None = None) -> torch.Tensor:
    """Resize so that the short side is ``size`` (mmseg ``Resize(scale=(max_long_side, size), keep_ratio=True)``)."""
    height, width = image.shape[-2:]
    return resize_image(image, short_side_size(height, width, size, max_long_side), antialias=False)


def resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the long side is ``size``, keeping the aspect ratio."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    return resize_image(image, (int(height * scale + 0.5), int(width * scale + 0.5)), antialias=False)


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size x size`` ignoring the aspect ratio (GEM package's squash, training-free.md §14)."""
    return resize_image(image, (size, size), antialias=False)


def build_test_resize(config: dict[str, Any] | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Image-only resize from ``{"mode": "short" | "long" | "square", "size": int, "max_long_side": int}``.

    ``None`` means no resizing (the method resizes itself). ``max_long_side`` applies to ``"short"`` only.
    """
    if config is None:
        return None
    unknown = set(config) - {"mode", "size", "max_long_side"}
    if unknown or "mode" not in config or "size" not in config:
        raise ValueError(
            f"test_resize must be a dict with 'mode' and 'size' (and optionally 'max_long_side'), got {config!r}."
        )
    mode, size = config["mode"], int(config["size"])
    if mode == "short":
        max_long = config.get("max_long_side")
        return lambda image: resize_short_side(image, size, None if max_long is None else int(max_long))
    if "max_long_side" in config:
        raise ValueError(f"'max_long_side' only applies to mode 'short', got {config!r}.")
    if mode == "long":
        return lambda image: resize_long_side(image, size)
    if mode == "square":
        return lambda image: resize_square(image, size)
    raise ValueError(f"Unknown test_resize mode {mode!r}; use 'short', 'long' or 'square'.")


# ----------------------------------------------------------------------------------------------------------------
# Geometric operations on a whole sample


def _label_keys(sample: Sample) -> list[str]:
    return [key for key in _LABEL_PAD if key in sample]


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize the image (bilinear, antialiased) and every label map / mask (nearest) to ``size = (h, w)``."""
    out = dict(sample)
    out["image"] = resize_image(sample["image"], size, antialias=True)
    for key in _label_keys(sample):
        out[key] = resize_nearest(sample[key], size)
    return out


def crop_sample(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop rows ``top:top+height`` and columns ``left:left+width`` of the image and all label maps / masks."""
    out = dict(sample)
    for key in ["image", *_label_keys(sample)]:
        out[key] = sample[key][..., top : top + height, left : left + width]
    return out


def pad_sample(sample: Sample, height: int, width: int, image_pad_value: int = IMAGE_PAD_VALUE) -> Sample:
    """Pad at the bottom/right to at least ``height x width`` (image ``image_pad_value``, labels per key)."""
    in_h, in_w = sample["image"].shape[-2:]
    pad_h, pad_w = max(height - in_h, 0), max(width - in_w, 0)
    if pad_h == 0 and pad_w == 0:
        return sample
    out = dict(sample)
    out["image"] = F.pad(sample["image"], (0, pad_w, 0, pad_h), value=image_pad_value)
    for key in _label_keys(sample):
        value = sample[key]
        if value.dtype == torch.bool:  # F.pad does not support bool tensors
            out[key] = F.pad(value.to(torch.uint8), (0, pad_w, 0, pad_h), value=0).bool()
        else:
            out[key] = F.pad(value, (0, pad_w, 0, pad_h), value=_LABEL_PAD[key])
    return out


def hflip_sample(sample: Sample) -> Sample:
    """Mirror the image and all label maps / masks horizontally."""
    out = dict(sample)
    for key in ["image", *_label_keys(sample)]:
        out[key] = sample[key].flip(-1)
    return out


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=generator))


# ----------------------------------------------------------------------------------------------------------------
# Training transforms (detectron2 / Mask2Former semantics, maskclippp.md §7.5)


class RandomHorizontalFlip:
    """Flip the sample horizontally with probability ``prob`` (detectron2 ``RandomFlip``)."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return hflip_sample(sample) if float(torch.rand((), generator=generator)) < self.prob else sample


class ResizeScale:
    """detectron2 ``ResizeScale``: scale s ~ U(min_scale, max_scale); fit the image into ``s x target`` keeping its
    aspect ratio (``f = min(s T_h / H, s T_w / W)``, output ``round(H f), round(W f)``)."""

    def __init__(self, min_scale: float, max_scale: float, target_size: tuple[int, int]) -> None:
        self.min_scale, self.max_scale, self.target_size = min_scale, max_scale, target_size

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        height, width = sample["image"].shape[-2:]
        scale = _uniform(self.min_scale, self.max_scale, generator)
        factor = min(scale * self.target_size[0] / height, scale * self.target_size[1] / width)
        size = (max(int(round(height * factor)), 1), max(int(round(width * factor)), 1))
        return resize_sample(sample, size)


class FixedSizeCrop:
    """detectron2 ``FixedSizeCrop``: random crop of at most ``size`` (one uniform draw scales both offsets),
    then bottom/right padding to exactly ``size`` when ``pad`` is set."""

    def __init__(self, size: tuple[int, int], pad: bool = True, pad_value: int = IMAGE_PAD_VALUE) -> None:
        self.size, self.pad, self.pad_value = size, pad, pad_value

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        height, width = sample["image"].shape[-2:]
        max_top, max_left = max(height - self.size[0], 0), max(width - self.size[1], 0)
        fraction = float(torch.rand((), generator=generator))
        top, left = int(round(max_top * fraction)), int(round(max_left * fraction))
        sample = crop_sample(sample, top, left, min(self.size[0], height), min(self.size[1], width))
        return pad_sample(sample, *self.size, image_pad_value=self.pad_value) if self.pad else sample


class ResizeShortestEdge:
    """detectron2 ``ResizeShortestEdge`` with ``sample_style="choice"``: short side drawn from ``short_sizes``,
    long side capped at ``max_size``."""

    def __init__(self, short_sizes: Sequence[int], max_size: int) -> None:
        if not short_sizes:
            raise ValueError("ResizeShortestEdge needs at least one short-side size.")
        self.short_sizes, self.max_size = list(short_sizes), max_size

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        height, width = sample["image"].shape[-2:]
        short = self.short_sizes[_randint(len(self.short_sizes), generator)]
        return resize_sample(sample, short_side_size(height, width, short, self.max_size))


class RandomCrop:
    """detectron2 ``RandomCrop("absolute")``: crop ``min(size, image)`` at a uniformly random integer offset."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        height, width = sample["image"].shape[-2:]
        crop_h, crop_w = min(self.size[0], height), min(self.size[1], width)
        top = _randint(height - crop_h + 1, generator)
        left = _randint(width - crop_w + 1, generator)
        return crop_sample(sample, top, left, crop_h, crop_w)


class PadTo:
    """Pad at the bottom/right to ``size`` (image 128, labels ignore / void / empty)."""

    def __init__(self, size: tuple[int, int], pad_value: int = IMAGE_PAD_VALUE) -> None:
        self.size, self.pad_value = size, pad_value

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return pad_sample(sample, *self.size, image_pad_value=self.pad_value)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """``float [3, H, W]`` RGB in [0, 1] to HSV in [0, 1] (hue as a fraction of the colour circle)."""
    maxc, _ = rgb.max(dim=0)  # [H, W]
    minc, _ = rgb.min(dim=0)
    delta = maxc - minc
    saturation = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    red, green, blue = rgb
    hue = torch.where(
        maxc == red,
        (green - blue) / safe,
        torch.where(maxc == green, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe),
    )
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, maxc])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: ``float [3, H, W]`` HSV in [0, 1] to RGB in [0, 1]."""
    hue, saturation, value = hsv
    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = sector.long() % 6  # [H, W]
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * frac)
    t = value * (1.0 - saturation * (1.0 - frac))
    # channel value per sector 0..5: R = v q p p t v, G = t v v q p p, B = p p t v v q
    table = torch.stack(
        [
            torch.stack([value, q, p, p, t, value]),
            torch.stack([t, value, value, q, p, p]),
            torch.stack([p, p, t, value, value, q]),
        ]
    )  # [3, 6, H, W]
    index = sector[None, None].expand(3, 1, *sector.shape)  # [3, 1, H, W]
    return table.gather(1, index)[:, 0]


class ColorAugSSD:
    """Mask2Former ``ColorAugSSDTransform``: brightness (delta 32), then either contrast -> saturation -> hue or
    saturation -> hue -> contrast; each step applied with probability 0.5 (contrast / saturation factors in
    [0.5, 1.5], hue shift within +-18 of OpenCV's 180 hue units). Values are clamped to [0, 255] and truncated to
    uint8 after brightness / contrast, as the reference's ``convert``; the HSV round trip is done in float."""

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _coin(generator: torch.Generator | None) -> bool:
        return _randint(2, generator) == 1

    @staticmethod
    def _convert(image: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
        return (image * alpha + beta).clamp(0.0, 255.0).floor()

    def _brightness(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self._coin(generator):
            return self._convert(image, beta=_uniform(-self.brightness_delta, self.brightness_delta, generator))
        return image

    def _contrast(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self._coin(generator):
            return self._convert(image, alpha=_uniform(*self.contrast_range, generator))
        return image

    def _saturation(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self._coin(generator):
            hsv = rgb_to_hsv(image / 255.0)
            hsv[1] = (hsv[1] * _uniform(*self.saturation_range, generator)).clamp(0.0, 1.0)
            return (hsv_to_rgb(hsv) * 255.0).round()
        return image

    def _hue(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self._coin(generator):
            shift = int(torch.randint(-self.hue_delta, self.hue_delta + 1, (), generator=generator))
            hsv = rgb_to_hsv(image / 255.0)
            hsv[0] = (hsv[0] + shift / 180.0) % 1.0
            return (hsv_to_rgb(hsv) * 255.0).round()
        return image

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        image = sample["image"].float()  # [3, H, W] in [0, 255]
        image = self._brightness(image, generator)
        if self._coin(generator):
            image = self._hue(self._saturation(self._contrast(image, generator), generator), generator)
        else:
            image = self._contrast(self._hue(self._saturation(image, generator), generator), generator)
        out = dict(sample)
        out["image"] = image.clamp(0, 255).to(torch.uint8)
        return out


class Compose:
    """Apply sample transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Callable[[Sample, torch.Generator | None], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, generator)
        return sample


def lsj_transform(image_size: int, min_scale: float = 0.1, max_scale: float = 2.0) -> Compose:
    """COCO-Panoptic large-scale jitter (maskclippp.md §7.5 ``coco_panoptic_lsj``): flip, ResizeScale, FixedSizeCrop
    with padding to ``image_size x image_size``."""
    size = (image_size, image_size)
    return Compose([RandomHorizontalFlip(), ResizeScale(min_scale, max_scale, size), FixedSizeCrop(size, pad=True)])


def coco_stuff_transform(image_size: int, max_size: int = 4096, pad: bool = True) -> Compose:
    """COCO-Stuff augmentation (maskclippp.md §7.5 ``mask_former_semantic``): short side from
    ``[int(0.1 * x * S) for x in 3..19]`` (0.3 S .. 1.9 S, long side <= ``max_size``), random S x S crop,
    ColorAugSSD, flip; with ``pad`` the crop is padded to S x S (the reference leaves smaller crops unpadded and
    pads in the batch instead)."""
    short_sizes = [int(0.1 * x * image_size) for x in range(3, 20)]
    size = (image_size, image_size)
    steps: list[Callable[[Sample, torch.Generator | None], Sample]] = [
        ResizeShortestEdge(short_sizes, max_size),
        RandomCrop(size),
        ColorAugSSD(),
        RandomHorizontalFlip(),
    ]
    if pad:
        steps.append(PadTo(size))
    return Compose(steps)


def sem_seg_to_masks(sem_seg: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary mask per class present (ignore excluded), classes ascending: ``bool [N, H, W]``, ``int64 [N]``."""
    valid = sem_seg[(sem_seg >= 0) & (sem_seg < num_classes)]
    labels = torch.unique(valid)  # [N], sorted
    masks = sem_seg[None] == labels[:, None, None]  # [N, H, W]
    return masks, labels


def panoptic_to_masks(
    pan_seg: torch.Tensor, segment_ids: torch.Tensor, segment_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the given segments (``int64 [S]`` ids and labels), dropping segments with no pixel left.

    Returns ``bool [N, H, W]`` and ``int64 [N]`` (N <= S, input order kept).
    """
    masks = pan_seg[None] == segment_ids[:, None, None]  # [S, H, W]
    keep = masks.flatten(1).any(dim=1)  # [S]
    return masks[keep], segment_labels[keep]


"""Test-time resizing and the training augmentations (geometry, padding, consistency, seeding)."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovs.data.constants import IGNORE_INDEX
from ovs.data.transforms import (
    ColorAugSSD,
    FixedSizeCrop,
    RandomCrop,
    ResizeScale,
    ResizeShortestEdge,
    build_test_resize,
    coco_stuff_transform,
    hsv_to_rgb,
    lsj_transform,
    resize_long_side,
    resize_nearest,
    resize_short_side,
    resize_square,
    rgb_to_hsv,
    sem_seg_to_masks,
    short_side_size,
)


def coordinate_sample(height: int, width: int) -> dict[str, torch.Tensor]:
    """A sample whose labels encode the pixel position, so that geometry can be checked exactly."""
    rows = torch.arange(height)[:, None].expand(height, width)
    cols = torch.arange(width)[None].expand(height, width)
    position = rows * width + cols  # [H, W]
    image = torch.stack([rows % 256, cols % 256, (rows + cols) % 256]).to(torch.uint8)
    return {
        "image": image,
        "sem_seg": position % 7,
        "pan_seg": position + 1,
        "masks": torch.stack([position % 2 == 0, position < width]),
    }


def test_short_side_rounding_and_cap() -> None:
    assert short_side_size(375, 500, 336) == (336, 448)
    assert short_side_size(333, 500, 336) == (336, 505)  # 500 * 336 / 333 = 504.5 -> 505 (half up)
    assert short_side_size(100, 1000, 336, max_long_side=2048) == (205, 2048)
    assert short_side_size(500, 375, 448) == (597, 448)


def test_maskclippp_truncating_short_side_resize() -> None:
    """MaskCLIP++'s encoder resize: long side int(long * size / short). 416 * 512 / 320 = 665.6 -> 665 (half-up
    rounding gives 666); 320 * 512 / 416 = 393.8 -> 393 for the transposed image."""
    assert short_side_size(416, 320, 512, truncate=True) == (665, 512)
    assert short_side_size(416, 320, 512) == (666, 512)
    assert short_side_size(320, 416, 512, truncate=True) == (512, 665)
    assert short_side_size(416, 320, 336, truncate=True) == (436, 336)  # 436.8 -> 436
    with pytest.raises(ValueError, match="max_long_side"):
        short_side_size(416, 320, 512, max_long_side=2048, truncate=True)


def test_test_time_resize_functions() -> None:
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    short = resize_short_side(image, 60)
    assert short.shape == (3, 60, 80) and short.dtype == torch.uint8
    expected = F.interpolate(image[None].float(), size=(60, 80), mode="bilinear", align_corners=False)[0]
    assert torch.equal(short, expected.round().clamp(0, 255).to(torch.uint8))
    assert resize_long_side(image, 20).shape == (3, 15, 20)
    assert resize_square(image.float(), 16).shape == (3, 16, 16)
    assert resize_short_side(image[None].float(), 15).shape == (1, 3, 15, 20)
    assert build_test_resize(None) is None
    resize = build_test_resize({"mode": "short", "size": 10, "max_long_side": 12})
    assert resize is not None and resize(image).shape == (3, 9, 12)
    with pytest.raises(ValueError, match="mode"):
        build_test_resize({"mode": "diagonal", "size": 3})


def test_resize_nearest_matches_pil() -> None:
    label = np.random.default_rng(0).integers(0, 200, size=(13, 17), dtype=np.uint8)
    for size in [(7, 5), (26, 40), (13, 30)]:
        expected = np.asarray(Image.fromarray(label).resize(size[::-1], Image.NEAREST))
        assert np.array_equal(resize_nearest(torch.from_numpy(label), size).numpy(), expected)


def test_fixed_size_crop_pads_with_128_ignore_and_void() -> None:
    sample = coordinate_sample(6, 10)
    out = FixedSizeCrop((8, 8))(sample, torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 8, 8)
    assert bool((out["image"][:, 6:] == 128).all())
    assert bool((out["sem_seg"][6:] == IGNORE_INDEX).all()) and bool((out["pan_seg"][6:] == 0).all())
    assert out["masks"].shape == (2, 8, 8) and not bool(out["masks"][:, 6:].any())
    # the crop is a contiguous window of the original: positions advance by one along each row
    window = out["pan_seg"][:6] - 1
    left = int(window[0, 0])
    assert torch.equal(window, torch.arange(6)[:, None] * 10 + left + torch.arange(8)[None])


def test_fixed_size_crop_uses_one_uniform_for_both_offsets() -> None:
    sample = coordinate_sample(20, 30)
    generator = torch.Generator().manual_seed(5)
    fraction = float(torch.rand((), generator=torch.Generator().manual_seed(5)))
    out = FixedSizeCrop((10, 10))(sample, generator)
    top, left = round(10 * fraction), round(20 * fraction)
    assert int(out["pan_seg"][0, 0]) - 1 == top * 30 + left


def test_resize_scale_fits_scaled_target() -> None:
    sample = coordinate_sample(20, 40)
    generator = torch.Generator().manual_seed(1)
    scale = 0.5 + 1.0 * float(torch.rand((), generator=torch.Generator().manual_seed(1)))
    out = ResizeScale(0.5, 1.5, (16, 16))(sample, generator)
    factor = min(scale * 16 / 20, scale * 16 / 40)
    assert out["image"].shape[1:] == (round(20 * factor), round(40 * factor))
    assert out["sem_seg"].shape == out["pan_seg"].shape == out["masks"].shape[1:] == out["image"].shape[1:]


def test_lsj_is_consistent_and_seeded() -> None:
    sample = coordinate_sample(30, 50)
    transform = lsj_transform(32)
    first = transform(sample, torch.Generator().manual_seed(7))
    second = transform(sample, torch.Generator().manual_seed(7))
    assert all(torch.equal(first[k], second[k]) for k in sample)
    assert first["image"].shape == (3, 32, 32) and first["pan_seg"].shape == (32, 32)
    valid = first["pan_seg"] > 0
    position = first["pan_seg"][valid] - 1
    assert torch.equal(first["sem_seg"][valid], position % 7)  # labels moved together
    assert torch.equal(first["masks"][0][valid], position % 2 == 0)
    assert bool((first["sem_seg"][~valid] == IGNORE_INDEX).all())


def test_flip_keeps_image_and_labels_aligned() -> None:
    sample = coordinate_sample(4, 6)
    flips = [lsj_transform(4, 1.0, 1.0)(sample, torch.Generator().manual_seed(s)) for s in range(8)]
    flipped = [f for f in flips if int(f["pan_seg"][0, 0]) != 1]
    assert flipped and len(flipped) < len(flips)
    for out in flipped:
        assert int(out["pan_seg"][0, 0]) == 6  # flip first: column 0 shows the original last column (position 5)
        cols = out["image"][1]
        assert bool((cols[:, 0] >= cols[:, -1]).all())


def test_short_edge_choice_and_random_crop() -> None:
    sample = coordinate_sample(10, 20)
    out = ResizeShortestEdge([5], max_size=100)(sample, None)
    assert out["image"].shape == (3, 5, 10)
    out = ResizeShortestEdge([40], max_size=60)(sample, None)
    assert out["image"].shape == (3, 30, 60)
    cropped = RandomCrop((8, 30))(sample, torch.Generator().manual_seed(0))
    assert cropped["image"].shape == (3, 8, 20)  # the crop never exceeds the image


def test_coco_stuff_transform_output() -> None:
    sample = coordinate_sample(40, 60)
    sample.pop("pan_seg")
    sample.pop("masks")
    out = coco_stuff_transform(32)(sample, torch.Generator().manual_seed(2))
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.uint8
    masks, labels = sem_seg_to_masks(out["sem_seg"], 7)
    assert torch.equal(labels, out["sem_seg"][out["sem_seg"] >= 0].unique())
    assert torch.equal(masks.sum(dim=0) > 0, out["sem_seg"] != IGNORE_INDEX)


def test_hsv_round_trip_and_color_aug() -> None:
    rgb = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-6)
    pure_red = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    assert torch.allclose(rgb_to_hsv(pure_red)[:, 0, 0], torch.tensor([0.0, 1.0, 1.0]))
    sample = {"image": (rgb * 255).to(torch.uint8), "sem_seg": torch.zeros(9, 11, dtype=torch.int64)}
    out = ColorAugSSD()(sample, torch.Generator().manual_seed(3))
    assert out["image"].shape == (3, 9, 11) and out["image"].dtype == torch.uint8
    assert torch.equal(out["sem_seg"], sample["sem_seg"])
    changed = [not torch.equal(ColorAugSSD()(sample, torch.Generator().manual_seed(s))["image"], sample["image"])
               for s in range(6)]  # fmt: skip
    assert any(changed)


def test_long_side_and_square_resize_contents() -> None:
    image = torch.randint(0, 256, (3, 30, 45), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    # long side 20: scale 20 / 45, height 30 * 20 / 45 = 13.33 -> 13 (rounded half up), width 20
    for resized, size in ((resize_long_side(image, 20), (13, 20)), (resize_square(image, 16), (16, 16))):
        expected = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        assert torch.equal(resized, expected.round().clamp(0, 255).to(torch.uint8))
    assert resize_long_side(torch.zeros(3, 45, 30, dtype=torch.uint8), 20).shape == (3, 20, 13)
    assert resize_long_side(torch.zeros(3, 10, 50, dtype=torch.uint8), 9).shape == (3, 2, 9)  # 1.8 -> 2


def test_random_crop_contents_follow_the_generator() -> None:
    """The offsets are two draws of randint over the valid range (rows, then columns); every key moves with them."""
    sample = coordinate_sample(12, 20)
    offsets = set()
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        top, left = int(torch.randint(12 - 5 + 1, (), generator=g)), int(torch.randint(20 - 7 + 1, (), generator=g))
        out = RandomCrop((5, 7))(sample, torch.Generator().manual_seed(seed))
        for key in ("image", "sem_seg", "pan_seg", "masks"):
            assert torch.equal(out[key], sample[key][..., top : top + 5, left : left + 7]), key
        offsets.add((top, left))
    assert len(offsets) > 4  # different seeds give different windows


def color_only(step: str) -> ColorAugSSD:
    """ColorAugSSD with every step but ``step`` set to the identity."""
    identity = {"brightness_delta": 0.0, "contrast_range": (1.0, 1.0), "saturation_range": (1.0, 1.0),
                "hue_delta": 0}
    defaults = {"brightness_delta": 32.0, "contrast_range": (0.5, 1.5), "saturation_range": (0.5, 1.5),
                "hue_delta": 18}
    return ColorAugSSD(**(identity | {step: defaults[step]}))  # type: ignore[arg-type]


def test_color_aug_ranges_per_step() -> None:
    """Mask2Former's ranges: brightness +-32, contrast x [0.5, 1.5], saturation x [0.5, 1.5], hue +-18 of 180."""
    grey = {"image": torch.full((3, 2, 2), 100, dtype=torch.uint8)}
    shifts = {int(color_only("brightness_delta")(grey, torch.Generator().manual_seed(s))["image"][0, 0, 0]) - 100
              for s in range(60)}  # fmt: skip
    assert min(shifts) >= -32 and max(shifts) <= 31 and min(shifts) < -16 and max(shifts) > 16 and 0 in shifts
    factors = {int(color_only("contrast_range")(grey, torch.Generator().manual_seed(s))["image"][0, 0, 0]) / 100
               for s in range(60)}  # fmt: skip
    assert min(factors) >= 0.5 and max(factors) < 1.5 and min(factors) < 0.75 and max(factors) > 1.25

    rgb = torch.tensor([[200.0, 60.0, 60.0], [40.0, 160.0, 90.0]])  # two saturated colours, as [pixel, channel]
    sample = {"image": rgb.T.reshape(3, 1, 2).to(torch.uint8)}
    ratios, hue_shifts = [], []
    for seed in range(60):
        saturated = color_only("saturation_range")(sample, torch.Generator().manual_seed(seed))["image"]
        hued = color_only("hue_delta")(sample, torch.Generator().manual_seed(seed))["image"]
        for p in range(2):
            h0, s0, _ = colorsys.rgb_to_hsv(*(rgb[p] / 255).tolist())
            _, s1, _ = colorsys.rgb_to_hsv(*(saturated[:, 0, p].double() / 255).tolist())
            h2, _, _ = colorsys.rgb_to_hsv(*(hued[:, 0, p].double() / 255).tolist())
            ratios.append(s1 / s0)
            hue_shifts.append((h2 - h0 + 0.5) % 1.0 - 0.5)  # signed, as a fraction of the colour circle
    assert 0.5 - 0.02 <= min(ratios) < 0.75 and 1.25 < max(ratios) <= 1.5 + 0.02
    tolerance = 0.01  # uint8 rounding of the shifted colour
    assert -0.1 - tolerance <= min(hue_shifts) < -0.05 and 0.05 < max(hue_shifts) <= 0.1 + tolerance

"""Batched sliding windows (training-free spec §2.3, §6): grid formula, canvas average, padding, batching."""

from __future__ import annotations

import pytest
import torch

from ovs.inference import centred_padding, slide_inference, window_grid
from ovs.methods import SCLIP, ClearCLIP


def test_window_grid_matches_spec_example() -> None:
    """336 x 448 with crop 224 / stride 112 gives 2 x 3 = 6 crops of 224 x 224 (spec §2.3)."""
    boxes = window_grid(336, 448, 224, 112)
    assert boxes == [(y, x, y + 224, x + 224) for y in (0, 112) for x in (0, 112, 224)]


def test_last_window_snaps_to_the_border() -> None:
    """500 wide: x1 = 0, 112, 224, then 336 -> x2 = min(560, 500) = 500 -> x1 = 276."""
    boxes = window_grid(224, 500, 224, 112)
    assert [(x1, x2) for _, x1, _, x2 in boxes] == [(0, 224), (112, 336), (224, 448), (276, 500)]


def test_windows_larger_than_the_image_cover_it_once() -> None:
    assert window_grid(100, 150, 224, 112) == [(0, 0, 100, 150)]
    assert window_grid(100, 150, 0, 0) == [(0, 0, 100, 150)]  # crop 0 = whole image


def test_window_grid_validates_stride() -> None:
    with pytest.raises(ValueError, match="stride"):
        window_grid(10, 10, 4, 5)


def test_canvas_is_the_mean_over_covering_windows() -> None:
    """An encoder that writes each window's running number: every pixel gets the mean number of its windows."""
    calls = []

    def encode(windows: torch.Tensor) -> torch.Tensor:
        start = sum(len(c) for c in calls)
        calls.append(windows)
        ids = torch.arange(start, start + len(windows), dtype=torch.float32)
        return ids[:, None, None, None].expand(-1, 1, *windows.shape[-2:])

    image = torch.zeros(3, 6, 10)
    canvas = slide_inference([image], encode, crop=4, stride=3, window_batch=100)[0]
    boxes = window_grid(6, 10, 4, 3)  # 2 x 3 windows, numbered in grid order
    expected_sum, count = torch.zeros(6, 10), torch.zeros(6, 10)
    for number, (y1, x1, y2, x2) in enumerate(boxes):
        expected_sum[y1:y2, x1:x2] += number
        count[y1:y2, x1:x2] += 1
    assert len(calls) == 1 and len(calls[0]) == len(boxes) == 6
    torch.testing.assert_close(canvas[0], expected_sum / count)


@pytest.mark.parametrize("pad_multiple", [0, 8])
def test_window_pixels_reach_the_encoder_and_come_back_in_place(pad_multiple: int) -> None:
    """An identity encoder (first channel) reproduces the image exactly, with and without patch padding."""
    image = torch.randn(3, 13, 19)
    shapes = []

    def identity(windows: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(windows.shape[-2:]))
        return windows[:, :1]

    canvas = slide_inference([image], identity, crop=10, stride=4, window_batch=3, pad_multiple=pad_multiple)[0]
    torch.testing.assert_close(canvas[0], image[0])
    assert set(shapes) == ({(16, 16)} if pad_multiple else {(10, 10)})


def test_centred_padding_puts_the_odd_pixel_right_and_bottom() -> None:
    assert centred_padding(224, 224, 16) == (0, 0, 0, 0)
    assert centred_padding(13, 19, 8) == (2, 3, 1, 2)  # w 19 -> 24: 5 = 2 + 3; h 13 -> 16: 3 = 1 + 2


def test_encoder_output_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="window encoder must return"):
        slide_inference([torch.zeros(3, 8, 8)], lambda w: w[:, :1, :4], crop=0, stride=0, window_batch=1)


@pytest.fixture(scope="module")
def sclip(tiny_vit) -> SCLIP:
    method = SCLIP(clip=tiny_vit)
    method.set_vocabulary([["cat", "kitty"], ["dog"], ["sky"], ["grass"]])
    return method


def test_slide_equals_whole_image_when_the_window_covers_it(sclip) -> None:
    images = [torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)]
    whole = sclip.configure_protocol(resize="none", slide_crop=0)
    assert whole.slide_crop == 0
    expected = sclip.dense_logits(images, [(40, 56)])[0]
    sclip.configure_protocol(resize="none", slide_crop=64, slide_stride=32)
    torch.testing.assert_close(sclip.dense_logits(images, [(40, 56)])[0], expected, atol=0, rtol=0)


def test_batched_windows_equal_one_by_one_windows(sclip) -> None:
    """All windows of several images of different sizes in one forward = the reference's one window at a time."""
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((40, 56), (48, 33), (30, 30))]
    sizes = [(45, 60), (48, 33), (20, 25)]
    sclip.configure_protocol(size=36, slide_crop=24, slide_stride=16, window_batch=1)
    one_by_one = sclip.dense_logits(images, sizes)
    sclip.configure_protocol(size=36, slide_crop=24, slide_stride=16, window_batch=64)
    batched = sclip.dense_logits(images, sizes)
    for a, b in zip(batched, one_by_one):
        assert a.shape == (5, *b.shape[-2:])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_batched_windows_call_the_backbone_once_per_budget(sclip, monkeypatch) -> None:
    batches = []
    encode = sclip.encode_windows

    def counting(windows: torch.Tensor) -> torch.Tensor:
        batches.append(len(windows))
        return encode(windows)

    monkeypatch.setattr(sclip, "encode_windows", counting)
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)] * 2  # 2 x (2 x 3) windows of 32 px
    sclip.configure_protocol(resize="none", slide_crop=32, slide_stride=16, window_batch=5)
    sclip.dense_logits(images, [(48, 64)] * 2)
    assert batches == [5, 5, 2]


def test_clearclip_padding_variant_matches_manual_padding(tiny_vit) -> None:
    """Spec §6: a 30 x 37 window is zero-padded (after normalisation, centred) to 32 x 40 and the logits cropped
    back."""
    method = ClearCLIP(clip=tiny_vit)
    method.set_vocabulary(["cat", "dog"])
    image = torch.randint(0, 256, (3, 30, 37), dtype=torch.uint8)
    method.configure_protocol(resize="none", slide_crop=0, pad_to_patch=True)
    padded = method.dense_logits([image], [(30, 37)])[0]
    normalised = method.clip.normalize(image[None])
    manual = torch.nn.functional.pad(normalised, (1, 2, 1, 1))  # w 37 -> 40, h 30 -> 32
    with torch.no_grad():
        expected = method.encode_windows(manual)[0, :, 1:31, 1:38]
    torch.testing.assert_close(padded, expected, atol=1e-6, rtol=0)

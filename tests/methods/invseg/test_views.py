"""Random resized crops (spec O10) and the inverse mapping of the views' maps (spec §7)."""

from __future__ import annotations

import torch

from ovs.methods.invseg.views import CropBox, crop_views, paste_views, sample_crop_boxes


def test_crop_boxes_follow_random_resized_crop_ranges_and_are_seeded() -> None:
    boxes = sample_crop_boxes(512, 50, (0.6, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3))
    for b in boxes:
        assert 0 <= b.top and b.top + b.height <= 512 and 0 <= b.left and b.left + b.width <= 512
        assert 0.6 - 0.01 <= b.height * b.width / 512**2 <= 1.0
        assert 3 / 4 - 0.02 <= b.width / b.height <= 4 / 3 + 0.02
    again = sample_crop_boxes(512, 50, (0.6, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3))
    assert boxes == again
    assert len(set(boxes)) > 40


def test_identical_full_views_average_to_the_map() -> None:
    maps = torch.rand(3, 8, 8)
    full = CropBox(0, 0, 64, 64)
    mean, valid = paste_views(torch.stack([maps, maps]), [full, full], 64)
    torch.testing.assert_close(mean, maps)
    assert valid.all()


def test_crop_then_paste_round_trips_into_the_right_place() -> None:
    """An image-coordinate map cropped like a view and pasted back lands where it came from."""
    grid, size = 16, 64
    canvas = torch.zeros(1, grid, grid)
    canvas[0, 4:12, 8:16] = torch.arange(64.0).reshape(8, 8)  # the content of the box
    box = CropBox(16, 32, 32, 32)  # pixels of a 64 px image = cells [4:12, 8:16] of the 16-grid
    view = torch.nn.functional.interpolate(canvas[None, :, 4:12, 8:16], size=(grid, grid), mode="nearest")[0]
    mean, valid = paste_views(view[None], [box], size)
    assert valid[4:12, 8:16].all() and valid.sum() == 64
    torch.testing.assert_close(mean[0, 4:12, 8:16], canvas[0, 4:12, 8:16])
    assert (mean[0][~valid] == 0).all()


def test_overlapping_views_are_averaged_only_where_both_cover() -> None:
    a, b = torch.ones(1, 4, 4), torch.full((1, 4, 4), 3.0)
    mean, valid = paste_views(torch.stack([a, b]), [CropBox(0, 0, 16, 24), CropBox(0, 8, 16, 24)], 32)
    # on a 4-grid of a 32 px image: view a covers columns 0..2, view b columns 1..3, rows 0..1
    assert valid[:2].all() and not valid[2:].any()
    torch.testing.assert_close(mean[0, :2, 0], torch.ones(2))
    torch.testing.assert_close(mean[0, :2, 1:3], torch.full((2, 2), 2.0))
    torch.testing.assert_close(mean[0, :2, 3], torch.full((2,), 3.0))


def test_crop_views_resizes_each_box_to_the_full_size() -> None:
    image = torch.zeros(3, 32, 32)
    image[:, :16] = 255.0
    views = crop_views(image, [CropBox(0, 0, 16, 16), CropBox(16, 0, 16, 32)])
    assert views.shape == (2, 3, 32, 32)
    torch.testing.assert_close(views[0], torch.full((3, 32, 32), 255.0))
    torch.testing.assert_close(views[1], torch.zeros(3, 32, 32))

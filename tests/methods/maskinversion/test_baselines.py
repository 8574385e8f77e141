"""Region baselines' transforms on constructed images with hand-checked boxes (maskinversion spec §8)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageFilter

from ovs.backbones import CLIP
from ovs.methods.maskinversion.baselines import (
    BaselineEmbedder,
    crop_resize,
    ellipse_outline,
    expand_boxes,
    mask_boxes,
)


def test_boxes_use_inclusive_max_plus_one_and_empty_masks_take_the_image() -> None:
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True  # rows 2..4, cols 3..8
    masks[1, 7, 11] = True  # a single pixel in the last column
    boxes = mask_boxes(masks)
    assert boxes.tolist() == [[3, 2, 9, 5], [11, 7, 12, 8], [0, 0, 12, 10]]
    grown = expand_boxes(boxes[:1], 2.0, 10, 12)  # centre (6, 3.5), half sides (6, 3) -> clipped to the image
    assert grown.tolist() == [[0.0, 0.5, 12.0, 6.5]]


def test_crop_resize_equals_interpolating_the_crop() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 30, 40, generator=g) * 255
    boxes = torch.tensor([[8.0, 4.0, 24.0, 20.0], [0.0, 0.0, 40.0, 30.0], [30.0, 2.0, 33.0, 29.0]])
    out = crop_resize(image, boxes, size=8)
    for box, crop in zip(boxes.long().tolist(), out):
        expected = torch.nn.functional.interpolate(
            image[:, :, box[1]:box[3], box[0]:box[2]], size=(8, 8), mode="bilinear", align_corners=False
        )[0]
        assert torch.allclose(crop, expected, atol=1e-3)


def _two_colour_image() -> torch.Tensor:
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    image[1] = 200  # green everywhere
    image[:, 10:30, 20:50] = torch.tensor([10, 20, 250], dtype=torch.uint8)[:, None, None]  # a blue rectangle
    return image


def test_crop_and_masked_crop_on_a_constructed_image(tiny_vit: CLIP) -> None:
    image = _two_colour_image()
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True  # exactly the rectangle
    masks[1, 12:14, 22:24] = True
    masks[1, 26:28, 44:46] = True  # two blobs inside the rectangle: box 22..46 x 12..28, mostly unmasked pixels
    crop = BaselineEmbedder(tiny_vit, "crop").transform(image, masks)
    assert crop.shape == (2, 3, 32, 32)
    blue = torch.tensor([10.0, 20.0, 250.0])
    assert torch.allclose(crop[0], blue[:, None, None].expand(3, 32, 32), atol=1e-3)
    masked = BaselineEmbedder(tiny_vit, "masked_crop").transform(image, masks)
    mean = torch.tensor([0.485, 0.456, 0.406]) * 255
    assert torch.allclose(masked[1, :, 16, 16], mean, atol=1e-3)  # the box centre is outside both blobs
    assert torch.allclose(masked[1, :, 1, 1], blue, atol=1e-3)  # the first blob's corner
    black = BaselineEmbedder(tiny_vit, "masked_crop", fill="black", masked_full_image=True).transform(image, masks)
    assert black.shape == (2, 3, 32, 32) and black[0, :, 0, 0].abs().max() < 1e-3  # green outside -> black


def test_red_circle_outline_on_the_box_ellipse(tiny_vit: CLIP) -> None:
    box = torch.tensor([[10.0, 20.0, 50.0, 40.0]])  # centre (30, 30), semi-axes 20 x 10
    outline = ellipse_outline(box, 60, 70, thickness=2.0)[0]
    assert outline[20, 30] and outline[39, 30] and outline[30, 10] and outline[30, 49]  # the four vertices
    assert not outline[30, 30] and not outline[20, 10] and not outline[5, 30]
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 16:48, 8:56] = True
    drawn = BaselineEmbedder(tiny_vit, "red_circle").transform(image, mask)[0]  # 64 -> shortest side 32, 2x smaller
    assert torch.allclose(drawn[:, 8, 16], torch.tensor([255.0, 0.0, 0.0]), atol=1e-3)  # top vertex (16, 8)
    assert torch.allclose(drawn[:, 16, 16], torch.full((3,), 128.0), atol=1e-3)  # centre untouched


def test_fgvp_keeps_the_mask_sharp_and_blurs_the_rest_with_pil(tiny_vit: CLIP) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 8:20, 4:16] = True
    out = BaselineEmbedder(tiny_vit, "fgvp", blur_radius=3.0).transform(image, mask)[0]
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius=3.0))
    blurred = torch.from_numpy(__import__("numpy").asarray(pil).copy()).permute(2, 0, 1).float()
    assert torch.equal(out[:, mask[0]], image.float()[:, mask[0]])
    assert torch.equal(out[:, ~mask[0]], blurred[:, ~mask[0]])


def test_embeddings_are_normalised_and_cls_is_shared(tiny_vit: CLIP) -> None:
    image = _two_colour_image()
    masks = torch.zeros(3, 40, 60, dtype=torch.bool)
    masks[0, :20], masks[1, 20:], masks[2, 5:10, 5:10] = True, True, True
    for kind in ("cls", "crop", "masked_crop", "red_circle", "fgvp"):
        emb = BaselineEmbedder(tiny_vit, kind).embed(image, masks)
        assert emb.shape == (3, tiny_vit.embed_dim)
        assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
        assert torch.equal(emb[0], emb[1]) == (kind == "cls")
    with pytest.raises(ValueError, match="Unknown baseline"):
        BaselineEmbedder(tiny_vit, "alpha_clip")

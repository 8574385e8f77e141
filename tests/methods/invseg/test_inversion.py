"""The per-image optimisation on the tiny model: the loss decreases, steps = 0 is the baseline, determinism."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from ovs.methods.invseg.inversion import InvSegConfig, PromptInverter
from ovs.methods.invseg.prompt import build_prompts
from ovs.methods.invseg.views import crop_views, sample_crop_boxes

IMAGE_SIZE = 64  # 8 x 8 latent; the tiny UNet has attention at 8 (level 0) and 4 (level 1)


def _inverter(tiny_sd, **overrides) -> PromptInverter:
    model = dataclasses.replace(tiny_sd, unet=copy.deepcopy(tiny_sd.unet))
    config = InvSegConfig(image_size=IMAGE_SIZE, attention_resolutions=(8,), **overrides)
    return PromptInverter(model, config)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    img = torch.zeros(3, 48, 40)
    img[:, :24] = torch.tensor([200.0, 40.0, 40.0])[:, None, None]
    img[:, 24:] = torch.tensor([30.0, 60.0, 220.0])[:, None, None]
    return (img + 20 * torch.randn(img.shape, generator=generator)).clamp(0, 255)


def _fixed_loss(inverter: PromptInverter, image: torch.Tensor, embeddings: torch.Tensor, prompts) -> float:
    """The step loss on the views ``invert`` drew with seed 0 (its first use of the generator), averaged over four
    fixed noise draws (the same draws for every embedding)."""
    resized = torch.nn.functional.interpolate(image[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                              antialias=True)[0]
    boxes = sample_crop_boxes(IMAGE_SIZE, 2, generator=torch.Generator().manual_seed(0))
    latents = inverter.encode_images(crop_views(resized, boxes))
    total = 0.0
    for seed in range(4):
        generator = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            total += float(inverter._loss(latents, boxes, embeddings, prompts, generator)[0]) / 4
    return total


def test_fifteen_steps_lower_the_loss(tiny_sd, image) -> None:
    # t fixed at the range's lower end (5): the 15 steps then see nearly one objective on the random tiny UNet, whose
    # maps move little with t; over [5, 300] the draw-to-draw spread exceeds what 15 steps of lr 0.01 change.
    inverter = _inverter(tiny_sd, t_min=5, t_max=5)
    prompts = build_prompts(tiny_sd.tokenizer, ["red", "blue", "background"])
    result = inverter.invert(image, prompts, torch.Generator().manual_seed(0))
    assert len(result.losses) == 15 and result.maps.shape == (3, 8, 8)
    e0 = inverter.encode_text(prompts)
    assert not torch.equal(result.embeddings, e0)
    before = _fixed_loss(inverter, image, e0, prompts)
    after = _fixed_loss(inverter, image, result.embeddings, prompts)
    assert after < before - 1e-3 * abs(before)


def test_zero_steps_is_the_no_adaptation_map(tiny_sd, image) -> None:
    inverter = _inverter(tiny_sd, steps=0)
    prompts = build_prompts(tiny_sd.tokenizer, ["red", "blue", "background"])
    result = inverter.invert(image, prompts, torch.Generator().manual_seed(0))
    assert result.losses == []
    # the baseline by hand: un-augmented image, t = 50, the first noise draw of the same generator, E0
    resized = torch.nn.functional.interpolate(image[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                              antialias=True)[0]
    latents = inverter.encode_images(resized[None])
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([50])
    with torch.no_grad():
        _, w = inverter.maps(inverter.add_noise(latents, noise, t), t, inverter.encode_text(prompts), prompts)
    torch.testing.assert_close(result.maps, w[0].T.reshape(3, 8, 8))


def test_same_seed_same_result_and_class_only_keeps_other_rows(tiny_sd, image) -> None:
    inverter = _inverter(tiny_sd, steps=3, learn_tokens="class_only")
    prompts = build_prompts(tiny_sd.tokenizer, ["red", "blue", "background"])
    first = inverter.invert(image, prompts, torch.Generator().manual_seed(5))
    second = inverter.invert(image, prompts, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first.maps, second.maps)
    assert first.losses == second.losses
    e0 = inverter.encode_text(prompts)
    changed = (first.embeddings != e0).any(dim=-1)[0]  # [77]
    assert changed.nonzero().flatten().tolist() == [1, 2, 3]


def test_invalid_options_are_rejected_with_the_option_name() -> None:
    with pytest.raises(ValueError, match="Unknown InvSeg option"):
        InvSegConfig.from_dict({"step": 3})
    with pytest.raises(ValueError, match="t_min <= t_max"):
        InvSegConfig(t_min=10, t_max=5)


def test_categories_split_over_two_prompts_are_concatenated(tiny_sd, image) -> None:
    inverter = _inverter(tiny_sd, steps=1)
    names = [f"{word} plant" for word in ("potted", "green", "red", "blue", "tall")] * 8 + ["background"]
    prompts = build_prompts(tiny_sd.tokenizer, names)
    assert prompts.input_ids.shape[0] == 2
    result = inverter.invert(image, prompts, torch.Generator().manual_seed(0))
    assert result.maps.shape == (41, 8, 8) and result.embeddings.shape[0] == 2
    flat = result.maps.flatten(1)
    torch.testing.assert_close(flat.amax(1), torch.ones(41), atol=1e-5, rtol=0)  # every category min-max'ed
    torch.testing.assert_close(flat.amin(1), torch.zeros(41))

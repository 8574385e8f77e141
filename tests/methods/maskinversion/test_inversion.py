"""Token optimisation: decomposition = naive, joint vs independent, Dice, no model mutation at any resolution
(maskinversion spec §2-3, §5, §12.3-6)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import CLIP
from ovs.methods.maskinversion import InversionConfig, dice_loss, invert, legrad_maps
from ovs.methods.maskinversion.decomposition import precompute_u_analytic, precompute_u_vjp
from ovs.methods.maskinversion.inversion import preprocess
from ovs.methods.maskinversion.legrad import encode_last_block


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)


def _masks(height: int, width: int) -> torch.Tensor:
    masks = torch.zeros(4, height, width)
    masks[0, : height // 2, : width // 2] = 1  # a quadrant
    masks[1, height // 3 :, width // 4 :] = 1  # a large region
    masks[2, :2, :2] = 1  # a tiny corner
    return masks  # masks[3] is empty


def _state_bytes(clip: CLIP) -> bytes:
    buffer = io.BytesIO()
    torch.save(clip.model.state_dict(), buffer)
    return buffer.getvalue()


def test_analytic_precompute_equals_batched_vjp(tiny_vit: CLIP) -> None:
    state = encode_last_block(tiny_vit.dense, preprocess(tiny_vit, _image(40, 56), (32, 48)))
    analytic = precompute_u_analytic(tiny_vit.dense, state)
    vjp = precompute_u_vjp(tiny_vit.dense, state, chunk_bytes=1 << 16)  # several chunks of output rows
    assert analytic.shape == (1 + 4 * 6, tiny_vit.dense.width, tiny_vit.embed_dim)
    assert (analytic - vjp).abs().max() <= 1e-5 * vjp.abs().max()


@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_decomposition_gives_the_naive_maps_and_embeddings(tiny_vit: CLIP, size: tuple[int, int]) -> None:
    image, masks = _image(40, 56), _masks(40, 56)
    runs = {
        mode: invert(tiny_vit, image, masks, InversionConfig(image_size=size, grad_mode=mode, chunk_bytes=1 << 14))
        for mode in ("naive", "decomposed")
    }
    naive, decomposed = runs["naive"], runs["decomposed"]
    assert naive.grad_mode == "naive" and decomposed.grad_mode == "decomposed"
    assert (naive.maps - decomposed.maps).abs().max() <= 1e-5
    relative = (naive.embeddings - decomposed.embeddings).norm(dim=1) / naive.embeddings.norm(dim=1)
    assert relative.max() <= 1e-4
    assert torch.allclose(naive.losses, decomposed.losses, atol=1e-5)


def test_returned_maps_are_the_legrad_maps_of_the_last_step_tokens(tiny_vit: CLIP) -> None:
    image, masks = _image(32, 32), _masks(32, 32)[:2]
    one_step = invert(tiny_vit, image, masks, InversionConfig(image_size=32, iterations=1, grad_mode="naive"))
    initial = encode_last_block(tiny_vit.dense, preprocess(tiny_vit, image, (32, 32))).global_embedding
    expected = legrad_maps(tiny_vit.dense, preprocess(tiny_vit, image, (32, 32)), initial.expand(2, -1))
    assert (one_step.maps - expected).abs().max() < 1e-5  # step 1 maps the CLS-initialised token


def test_optimisation_lowers_the_dice_loss_on_a_clear_mask(tiny_vit: CLIP) -> None:
    image = _image(32, 32, seed=3)
    mask = torch.zeros(1, 32, 32)
    mask[0, :, :16] = 1
    config = InversionConfig(image_size=32, iterations=10, lr=0.1)
    result = invert(tiny_vit, image, mask, config)
    normalised = preprocess(tiny_vit, image, (32, 32))
    start = encode_last_block(tiny_vit.dense, normalised).global_embedding
    before = dice_loss(legrad_maps(tiny_vit.dense, normalised, start), mask)
    after = dice_loss(legrad_maps(tiny_vit.dense, normalised, result.embeddings), mask)
    assert after.item() < before.item() - 0.02
    assert result.losses[-1] < result.losses[0]


def test_independent_equals_one_run_per_mask_and_joint_differs_only_for_small_gradients(tiny_vit: CLIP) -> None:
    image, masks = _image(40, 56), _masks(40, 56)
    base = {"image_size": (32, 48), "grad_mode": "decomposed"}
    independent = invert(tiny_vit, image, masks, InversionConfig(optimization="independent", **base)).embeddings
    joint = invert(tiny_vit, image, masks, InversionConfig(optimization="joint", **base)).embeddings
    alone = torch.cat([invert(tiny_vit, image, m[None], InversionConfig(**base)).embeddings for m in masks])
    assert torch.allclose(independent, alone, rtol=1e-5, atol=1e-6)
    relative = (joint - alone).norm(dim=1) / alone.norm(dim=1)
    # the 1/M scale only matters where Adam's eps is comparable to the gradients: the empty mask
    assert relative[3] > 1e-4
    assert relative[3] > 10 * relative[:2].max()


def test_dice_of_a_perfect_map_is_zero_and_empty_masks_give_no_nan(tiny_vit: CLIP) -> None:
    mask = torch.zeros(2, 8, 8)
    mask[0, 2:6, 2:6] = 1
    assert dice_loss(mask[:1], mask[:1]).item() == 0
    empty = dice_loss(torch.full((1, 8, 8), 0.5), mask[1:])
    assert torch.allclose(empty, torch.tensor([1 - 1 / 33]))
    result = invert(tiny_vit, _image(32, 32), torch.zeros(2, 32, 32), InversionConfig(image_size=32))
    assert torch.isfinite(result.embeddings).all() and torch.isfinite(result.losses).all()
    none = invert(tiny_vit, _image(32, 32), torch.zeros(0, 32, 32), InversionConfig(image_size=32))
    assert none.embeddings.shape == (0, tiny_vit.embed_dim)


def test_no_model_mutation_and_any_resolution_in_any_order(tiny_vit: CLIP) -> None:
    before = _state_bytes(tiny_vit)
    flags = [p.requires_grad for p in tiny_vit.model.parameters()]
    image, masks = _image(40, 56), _masks(40, 56)[:2]
    runs = [invert(tiny_vit, image, masks, InversionConfig(image_size=s, grad_mode="decomposed"))
            for s in (32, 64, 32, (24, 40))]
    assert torch.equal(runs[0].embeddings, runs[2].embeddings)
    assert not torch.allclose(runs[0].embeddings, runs[1].embeddings)
    assert runs[3].maps.shape == (2, 40, 56)
    assert _state_bytes(tiny_vit) == before
    assert [p.requires_grad for p in tiny_vit.model.parameters()] == flags
    assert all(p.grad is None for p in tiny_vit.model.parameters())


def test_errors_name_the_fix(tiny_vit: CLIP) -> None:
    image, masks = _image(32, 32), _masks(32, 32)
    with pytest.raises(ValueError, match="multiple of the patch"):
        invert(tiny_vit, image, masks, InversionConfig(image_size=30))
    with pytest.raises(ValueError, match="divided by 255"):
        invert(tiny_vit, image, masks * 255, InversionConfig(image_size=32))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        invert(tiny_vit, image, masks, InversionConfig(image_size=32))
    with pytest.raises(ValueError, match="grad_mode"):
        InversionConfig(grad_mode="fast")


def test_auto_mode_uses_the_decomposition_for_many_masks(tiny_vit: CLIP) -> None:
    config = InversionConfig(image_size=32, iterations=10)
    assert config.resolve_grad_mode(2) == "naive"
    assert config.resolve_grad_mode(50) == "decomposed"
    masks = F.interpolate(_masks(32, 32)[None], size=(16, 16))[0].round()  # masks at a lower resolution than the image
    assert invert(tiny_vit, _image(32, 32), masks, config).maps.shape == (4, 16, 16)

"""PSM shapes and the consistency-alignment property (paper §3.2, spec §4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ovs.methods.maskclippp.psm import LinearPSM, NoPSM, PseudoTextPSM, SimilarityInputs, build_psm, clip_logit_scale


def inputs(n: int = 5, k: int = 7, t: int = 14, d: int = 16, b: int = 2, grid: int = 3) -> SimilarityInputs:
    g = torch.Generator().manual_seed(0)
    masks = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(k, t, d, generator=g), dim=-1)
    corrs = 100 * torch.einsum("nd,ktd->nkt", masks, text)
    image_index = torch.tensor([i * b // n for i in range(n)])
    dense = torch.randn(b, d, grid, grid, generator=g)
    return SimilarityInputs(corrs, masks, text, image_index, dense, torch.ones(b, grid * grid, dtype=torch.bool))


@pytest.mark.parametrize("name", ["none", "linear", "pseudo_text"])
def test_psm_output_shapes(name: str) -> None:
    psm = build_psm(name, dim=16, num_templates=14, width=32, num_heads=4).eval()
    assert psm(inputs()).shape == (5, 7)


def test_no_psm_is_the_template_mean() -> None:
    x = inputs()
    torch.testing.assert_close(NoPSM()(x), x.corrs.mean(dim=-1))


@pytest.mark.parametrize("num_templates", [1, 14])
def test_linear_psm_mean_init_is_the_identity_on_the_mean_similarity(num_templates: int) -> None:
    """Consistency alignment at step 0: the mean-initialised linear PSM equals the original CLIP similarity, so it
    ranks every mask's classes exactly as CLIP does."""
    x = inputs(t=num_templates)
    psm = LinearPSM(num_templates, width=768, init="mean")
    with torch.no_grad():
        out = psm(x)
    reference = NoPSM()(x)
    torch.testing.assert_close(out, reference, atol=1e-3, rtol=1e-5)
    assert torch.equal(out.argsort(dim=1), reference.argsort(dim=1))
    assert psm.expand.weight.std() > 0  # the hidden features stay random (not a symmetric rank-1 init)


def test_linear_psm_reference_init_can_reverse_the_ranking() -> None:
    """Quirk Q3: PyTorch's default init is a random affine map a·s + b of the (single-template) score; for the seeds
    where a < 0 the initial ranking is exactly the reverse of CLIP's."""
    x = inputs(t=1)
    reference = NoPSM()(x)
    reversed_seeds = []
    for seed in range(10):
        torch.manual_seed(seed)
        psm = LinearPSM(1, width=768, init="default")
        with torch.no_grad():
            gain = float(psm.reduce.weight @ psm.expand.weight)
            out = psm(x)
        expected = reference.argmin(dim=1) if gain < 0 else reference.argmax(dim=1)
        assert torch.equal(out.argmax(dim=1), expected)
        if gain < 0:
            reversed_seeds.append(seed)
    assert reversed_seeds


def test_linear_psm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="init"):
        LinearPSM(14, init="xavier")
    with pytest.raises(ValueError, match="num_templates"):
        LinearPSM(14, width=8)


def test_pseudo_text_psm_matches_eq3_and_ignores_padded_cells() -> None:
    x = inputs()
    psm = PseudoTextPSM(16, num_heads=4, dropout=0.0).eval()
    with torch.no_grad():
        out = psm(x)
        patches = psm.img_proj(F.normalize(x.dense.flatten(2).transpose(1, 2), dim=-1))  # [B, 9, D]
        text = F.normalize(x.text.mean(dim=1), dim=-1)  # [K, D]
        expected = []
        for n, image in enumerate(x.image_index.tolist()):
            pseudo, _ = psm.attention(text[None], patches[image : image + 1], patches[image : image + 1])
            classifier = psm.norm(text + pseudo[0])
            expected.append(classifier @ x.mask_embeddings[n])
        torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-5)
        valid = x.dense_valid.clone()
        valid[:, -3:] = False
        dense = x.dense.clone()
        masked = SimilarityInputs(x.corrs, x.mask_embeddings, x.text, x.image_index, dense, valid)
        before = psm(masked)
        dense.view(2, 16, 9)[:, :, -3:] = torch.randn(2, 16, 3)
        torch.testing.assert_close(psm(masked), before)
        assert not torch.allclose(before, out)


def test_pseudo_text_psm_needs_dense() -> None:
    x = inputs()
    x.dense = None
    with pytest.raises(ValueError, match="dense"):
        PseudoTextPSM(16, num_heads=4)(x)


def test_logit_scale_is_clamped_constant() -> None:
    assert clip_logit_scale(torch.tensor(4.6052)) == pytest.approx(100.0, rel=1e-4)
    assert clip_logit_scale(torch.tensor(10.0)) == 100.0
    assert clip_logit_scale(torch.log(torch.tensor(1 / 0.07))) == pytest.approx(1 / 0.07, rel=1e-5)

"""Every training-free method's tokens and logits against a plain-tensor computation straight from its equations
(training-free spec §1-§7), on the tiny random 3-block ViT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import AttentionInputs, interpolate_pos_embed
from ovs.methods import GEM, NACLIP, SCLIP, ClearCLIP, CLIPSurgery, MaskCLIP, VanillaCLIP
from ovs.methods.training_free import GEMAttention, gaussian_neighbourhood_bias
from tests.plain_vit import embed, layer_norm

ATOL = 1e-5

# --------------------------------------------------------------------------------------------------------------------
# Plain-tensor CLIP ViT (spec §1): conv patchify, CLS, pos, ln_pre, blocks, ln_post on all tokens, proj.


def softmax_attend(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, scale: float | torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(a bᵀ · scale + bias) c, explicitly."""
    logits = a @ b.transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1) @ c


def qkv(blk, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """h = ln_1(x) and per-head q, k, v [B, H, S, d] (in_proj bias included)."""
    h = layer_norm(x, blk.ln_1)
    q, k, v = (h @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias).chunk(3, dim=-1)
    heads = blk.attn.num_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    return h, split(q), split(k), split(v)


def out_proj(blk, o: torch.Tensor) -> torch.Tensor:
    o = o.transpose(1, 2).reshape(o.shape[0], o.shape[2], -1)
    return o @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias


def mlp(blk, x: torch.Tensor) -> torch.Tensor:
    hx = layer_norm(x, blk.ln_2)
    hidden = hx @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    return hidden @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias


def block(blk, x: torch.Tensor, attention=None, residual: bool = True, ffn: bool = True) -> torch.Tensor:
    h, q, k, v = qkv(blk, x)
    scale = 1 / math.sqrt(q.shape[-1])
    o = out_proj(blk, attention(h, q, k, v, scale) if attention else softmax_attend(q, k, v, scale))
    x = x + o if residual else o
    return x + mlp(blk, x) if ffn else x


def head(visual, x: torch.Tensor) -> torch.Tensor:
    return layer_norm(x, visual.ln_post) @ visual.proj


def reference_last_block(visual, x, pos, attention=None, residual=True, ffn=True) -> torch.Tensor:
    """Tokens with the last block's attention / residual / FFN replaced."""
    tokens = embed(visual, x, pos)
    blocks = visual.transformer.resblocks
    for i, blk in enumerate(blocks):
        last = i == len(blocks) - 1
        tokens = block(blk, tokens, attention if last else None, residual or not last, ffn or not last)
    return head(visual, tokens)


def reference_parallel(visual, x, pos, depth, path_attention, keep_original_cls=False) -> torch.Tensor:
    """GEM / CLIP Surgery dual path: the path starts at the input of block L - depth and accumulates
    out_proj(attention(ln_1(x_original))) without FFNs (GEM §3.1, spec §3.2, §5)."""
    tokens = embed(visual, x, pos)
    blocks = visual.transformer.resblocks
    path = None
    for i, blk in enumerate(blocks):
        if i == len(blocks) - depth:
            path = tokens
        if path is not None:
            h, q, k, v = qkv(blk, tokens)
            path = path + out_proj(blk, path_attention(h, q, k, v, 1 / math.sqrt(q.shape[-1])))
        tokens = block(blk, tokens)
    if keep_original_cls:
        path = torch.cat([tokens[:, :1], path[:, 1:]], dim=1)
    return head(visual, path)


def gem_reference(h, q, k, v, scale, iterations: int = 1, inverse_temperature: float | None = None):
    """GEM eq. 3-7 as coded (spec §3.2): β = mean ‖h‖ · d^-½; per projection z: iterate normalise + self-attend,
    then normalise and attend to v; mean over the three."""
    if inverse_temperature is None:
        beta = (h.norm(dim=-1).mean(dim=-1) * scale)[:, None, None, None]  # [B, 1, 1, 1]
    else:
        beta = inverse_temperature
    outputs = []
    for z in (v, k, q):
        for _ in range(iterations):
            z = z / z.norm(dim=-1, keepdim=True)
            z = softmax_attend(z, z, z, beta)
        z = z / z.norm(dim=-1, keepdim=True)
        outputs.append(softmax_attend(z, z, v, beta))
    return (outputs[0] + outputs[1] + outputs[2]) / 3


def naclip_omega(gh: int, gw: int, sigma: float) -> torch.Tensor:
    """Ω[i, j] = exp(-((r_i - r_j)² + (c_i - c_j)²) / (2σ²)) over patches, zero for the CLS row / column."""
    n = gh * gw
    omega = torch.zeros(n + 1, n + 1)
    for i in range(n):
        for j in range(n):
            (ri, ci), (rj, cj) = divmod(i, gw), divmod(j, gw)
            omega[1 + i, 1 + j] = math.exp(-((ri - rj) ** 2 + (ci - cj) ** 2) / (2 * sigma**2))
    return omega


def tokens_of(method, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return method.clip.dense.forward_dense(x, method.policy).tokens


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1234))


def native_pos(tiny_vit) -> torch.Tensor:
    return tiny_vit.model.visual.positional_embedding


# --------------------------------------------------------------------------------------------------------------------
# Tokens per method


def test_vanilla_clip_is_the_pretrained_forward(tiny_vit, images) -> None:
    visual = tiny_vit.model.visual
    ref = reference_last_block(visual, images, native_pos(tiny_vit))
    torch.testing.assert_close(tokens_of(VanillaCLIP(clip=tiny_vit), images), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("residual", [True, False])
def test_maskclip_value_path(tiny_vit, images, residual: bool) -> None:
    """Spec §4: o = out_proj(v); residual + FFN kept (original code) or dropped (ClearCLIP's variant)."""
    visual = tiny_vit.model.visual
    ref = reference_last_block(visual, images, native_pos(tiny_vit), attention=lambda h, q, k, v, s: v,
                               residual=residual, ffn=residual)
    torch.testing.assert_close(tokens_of(MaskCLIP(clip=tiny_vit, residual=residual), images), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("keep", [True, False])
def test_sclip_correlative_self_attention(tiny_vit, images, keep: bool) -> None:
    """SCLIP eq. 3: Attn = softmax(q qᵀ s) + softmax(k kᵀ s) (rows sum to 2), then @ v; residual + FFN per option."""

    def csa(h, q, k, v, s):
        attn = torch.softmax(q @ q.transpose(-1, -2) * s, -1) + torch.softmax(k @ k.transpose(-1, -2) * s, -1)
        return attn @ v

    visual = tiny_vit.model.visual
    ref = reference_last_block(visual, images, native_pos(tiny_vit), attention=csa, residual=keep, ffn=keep)
    torch.testing.assert_close(tokens_of(SCLIP(clip=tiny_vit, keep_residual_ffn=keep), images), ref, atol=ATOL,
                               rtol=0)


def test_clearclip_query_query_without_residual_and_ffn(tiny_vit, images) -> None:
    visual = tiny_vit.model.visual
    ref = reference_last_block(visual, images, native_pos(tiny_vit),
                               attention=lambda h, q, k, v, s: softmax_attend(q, q, v, s), residual=False, ffn=False)
    torch.testing.assert_close(tokens_of(ClearCLIP(clip=tiny_vit), images), ref, atol=ATOL, rtol=0)


def test_naclip_neighbourhood_attention(tiny_vit, images) -> None:
    """Spec §7: softmax(k kᵀ s + Ω) v with Ω Gaussian (σ = 5) over grid positions, no residual, no FFN."""
    visual = tiny_vit.model.visual
    omega = naclip_omega(4, 4, 5.0)
    ref = reference_last_block(visual, images, native_pos(tiny_vit),
                               attention=lambda h, q, k, v, s: softmax_attend(k, k, v, s, omega),
                               residual=False, ffn=False)
    torch.testing.assert_close(tokens_of(NACLIP(clip=tiny_vit), images), ref, atol=ATOL, rtol=0)


def test_naclip_bias_formula_on_a_non_square_grid() -> None:
    torch.testing.assert_close(gaussian_neighbourhood_bias((3, 5), 2.0), naclip_omega(3, 5, 2.0), atol=1e-7, rtol=0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_clip_surgery_value_value_parallel_path(tiny_vit, images, depth: int) -> None:
    """Spec §5: v-v attention on the path over the last `depth` blocks, original CLS at the end."""
    visual = tiny_vit.model.visual
    ref = reference_parallel(visual, images, native_pos(tiny_vit), depth,
                             lambda h, q, k, v, s: softmax_attend(v, v, v, s), keep_original_cls=True)
    torch.testing.assert_close(tokens_of(CLIPSurgery(clip=tiny_vit, depth=depth), images), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("depth", "iterations", "inverse_temperature"),
                         [(2, 1, None), (3, 1, None), (2, 0, None), (2, 3, None), (3, 1, 0.5)])
def test_gem_parallel_self_self_attention(tiny_vit, images, depth, iterations, inverse_temperature) -> None:
    """GEM eq. 2-7 on the parallel path (spec §3.2), default adaptive temperature / 1 iteration and variants."""
    visual = tiny_vit.model.visual
    ref = reference_parallel(
        visual, images, native_pos(tiny_vit), depth,
        lambda h, q, k, v, s: gem_reference(h, q, k, v, s, iterations, inverse_temperature),
    )
    method = GEM(clip=tiny_vit, depth=depth, iterations=iterations, inverse_temperature=inverse_temperature)
    torch.testing.assert_close(tokens_of(method, images), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("method_class", "mode"), [(SCLIP, "dino"), (GEM, "timm"), (CLIPSurgery, "bilinear")])
def test_positional_embedding_variant_per_method(tiny_vit, method_class, mode: str) -> None:
    """Spec §1.1: A (dino) for SCLIP, B (timm) for GEM, C (bilinear, not in place) for CLIP Surgery."""
    x = torch.randn(1, 3, 40, 56)
    visual = tiny_vit.model.visual
    before = visual.positional_embedding.detach().clone()
    pos = interpolate_pos_embed(visual.positional_embedding, (4, 4), (5, 7), mode)
    kwargs = {"depth": 2} if method_class is not SCLIP else {}
    method = method_class(clip=tiny_vit, **kwargs)
    ref_with = {
        SCLIP: lambda: reference_last_block(visual, x, pos, lambda h, q, k, v, s: (
            softmax_attend(q, q, v, s) + softmax_attend(k, k, v, s))),
        GEM: lambda: reference_parallel(visual, x, pos, 2, lambda h, q, k, v, s: gem_reference(h, q, k, v, s)),
        CLIPSurgery: lambda: reference_parallel(visual, x, pos, 2, lambda h, q, k, v, s: softmax_attend(v, v, v, s),
                                                keep_original_cls=True),
    }[method_class]
    torch.testing.assert_close(tokens_of(method, x), ref_with(), atol=ATOL, rtol=0)
    assert torch.equal(visual.positional_embedding, before)  # never mutated (CLIP Surgery's variant C did)


# --------------------------------------------------------------------------------------------------------------------
# Logits


def test_sclip_window_logits_are_upsampled_cosines(tiny_vit, images) -> None:
    """Spec §2.3: normalised patch tokens @ text -> (K, g_h, g_w) -> bilinear (align_corners False) to the window."""
    method = SCLIP(clip=tiny_vit)
    method.set_vocabulary([["cat", "kitty"], ["dog"], ["sky"]])
    text = method.vocabulary.classifier.embeddings
    tokens = reference_last_block(tiny_vit.model.visual, images, native_pos(tiny_vit), lambda h, q, k, v, s: (
        softmax_attend(q, q, v, s) + softmax_attend(k, k, v, s)))
    patches = tokens[:, 1:] / tokens[:, 1:].norm(dim=-1, keepdim=True)
    cos = (patches @ text.T).transpose(1, 2).reshape(2, 4, 4, 4)  # [B, K_names, g_h, g_w]
    expected = F.interpolate(cos, size=(32, 32), mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(method.encode_windows(images), expected, atol=ATOL, rtol=0)


def test_clip_surgery_feature_surgery_similarity(tiny_vit, images) -> None:
    """Spec §5: w = softmax(2 F_cls Tᵀ) / mean; sim = Σ_ch (F ⊙ T_c ⊙ w_c − mean_c(F ⊙ T_c ⊙ w_c))."""
    method = CLIPSurgery(clip=tiny_vit, depth=2)
    method.set_vocabulary(["cat", "dog", "sky", "grass"])
    text = method.vocabulary.classifier.embeddings  # [K, D]
    tokens = reference_parallel(tiny_vit.model.visual, images, native_pos(tiny_vit), 2,
                                lambda h, q, k, v, s: softmax_attend(v, v, v, s), keep_original_cls=True)
    feats = tokens / tokens.norm(dim=-1, keepdim=True)  # [B, 1 + N, D]
    prob = torch.softmax(2 * feats[:, :1] @ text.T, dim=-1)  # [B, 1, K]
    w = prob / prob.mean(-1, keepdim=True)
    product = feats[:, 1:, None, :] * text[None, None] * w[:, :, :, None]  # [B, N, K, D]
    expected = (product - product.mean(dim=2, keepdim=True)).sum(-1)  # [B, N, K]
    with torch.no_grad():
        output = method.clip.dense.forward_dense(images, method.policy)
        torch.testing.assert_close(method.similarity(output, text), expected, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# GEM temperature and iterations


def gem_inputs(h: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
    return AttentionInputs(x=h, h=h, q=q, k=k, v=v, scale=q.shape[-1] ** -0.5, grid=(2, 3), num_prefix=1, block=0)


def test_gem_adaptive_temperature_is_mean_token_norm_times_head_scale() -> None:
    h = torch.randn(2, 7, 12) * torch.tensor([1.0, 3.0])[:, None, None]
    heads = torch.randn(2, 3, 7, 4)
    beta = GEMAttention().beta(gem_inputs(h, heads, heads, heads))
    expected = torch.stack([torch.stack([h[b, t].norm() for t in range(7)]).mean() / 2.0 for b in range(2)])
    torch.testing.assert_close(beta, expected)
    assert GEMAttention(inverse_temperature=0.5).beta(gem_inputs(h, heads, heads, heads)).tolist() == [0.5, 0.5]


def test_gem_temperature_limits_give_identity_and_uniform_attention() -> None:
    """β → ∞: each normalised token attends only to itself (its self-similarity 1 is the unique maximum), so every
    ensemble member returns v whatever the iterations; β → 0: uniform attention, every token gets the mean value."""
    h, q, k, v = torch.randn(1, 7, 12), torch.randn(1, 3, 7, 4), torch.randn(1, 3, 7, 4), torch.randn(1, 3, 7, 4)
    inputs = gem_inputs(h, q, k, v)
    for iterations in (0, 1, 3):
        torch.testing.assert_close(GEMAttention(iterations, inverse_temperature=1e6)(inputs), v, atol=1e-5, rtol=0)
        uniform = GEMAttention(iterations, inverse_temperature=1e-9)(inputs)
        torch.testing.assert_close(uniform, v.mean(dim=2, keepdim=True).expand_as(v), atol=1e-5, rtol=0)


def test_gem_iterations_compose() -> None:
    """Two iterations = one iteration applied to the output of one self-self step (eq. 5-6), per projection."""
    h, q, k, v = torch.randn(2, 6, 8), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    beta = (h.norm(dim=-1).mean(dim=-1) / 2.0)[:, None, None, None]

    def step(z: torch.Tensor) -> torch.Tensor:
        z = z / z.norm(dim=-1, keepdim=True)
        return softmax_attend(z, z, z, beta)

    stepped = gem_inputs(h, step(q), step(k), v)
    one_after_step = GEMAttention(iterations=1, projections=("q", "k"))(stepped)
    two = GEMAttention(iterations=2, projections=("q", "k"))(gem_inputs(h, q, k, v))
    torch.testing.assert_close(two, one_after_step, atol=1e-6, rtol=0)


def test_gem_depth_defaults_and_validation(tiny_vit) -> None:
    from ovs.backbones import create_clip

    toy = create_clip("ovs-toy-vit")  # 6 blocks
    assert GEM(clip=toy).policy.parallel.depth == 4  # GEM supp. §9
    package = GEM(clip=toy, gem_package_defaults=True)
    assert package.policy.parallel.depth == 6 and package.base_config.resize == "square"  # gem_depth=7, squash
    assert GEM(clip=tiny_vit, depth=3).policy.parallel.depth == 3
    with pytest.raises(ValueError, match="1..3"):
        GEM(clip=tiny_vit)  # the paper's 4 does not fit a 3-block ViT


def test_methods_reject_non_vit_backbones() -> None:
    from ovs.backbones import create_clip
    from tests.conftest import TINY_RESNET

    with pytest.raises(ValueError, match="modifies ViT attention blocks"):
        SCLIP(clip=create_clip(TINY_RESNET))


# --------------------------------------------------------------------------------------------------------------------
# Parity helpers of the public API (issue 11): CLIP Surgery maps, normalised input, GEM's original path


def surgery_reference(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP Surgery's clip_feature_surgery on all tokens (CLS row included): [B, 1 + N, K]."""
    feats = tokens / tokens.norm(dim=-1, keepdim=True)
    prob = torch.softmax(2 * feats[:, :1] @ text.T, dim=-1)  # [B, 1, K]
    w = prob / prob.mean(-1, keepdim=True)
    product = feats[:, :, None, :] * text[None, None] * w[:, :, :, None]  # [B, 1 + N, K, D]
    return (product - product.mean(dim=2, keepdim=True)).sum(-1)


def test_clip_surgery_similarity_map_normalises_on_the_grid_then_upsamples(tiny_vit, images) -> None:
    """get_similarity_map: min-max per name over the 4 x 4 patch grid, then bilinear to 32 x 32. The same maps
    drive the pipeline's ``score: minmax``; min-max after upsampling (GEM's order) gives different maps."""
    method = CLIPSurgery(clip=tiny_vit, depth=2)
    method.set_vocabulary(["cat", "dog", "sky", "grass"])
    text = method.vocabulary.classifier.embeddings
    tokens = reference_parallel(tiny_vit.model.visual, images, native_pos(tiny_vit), 2,
                                lambda h, q, k, v, s: softmax_attend(v, v, v, s), keep_original_cls=True)
    similarity = surgery_reference(tokens, text)  # [B, 1 + N, K]
    grid = similarity[:, 1:].transpose(1, 2).reshape(2, 4, 4, 4)  # [B, K, 4, 4]
    low, high = grid.amin(dim=(2, 3), keepdim=True), grid.amax(dim=(2, 3), keepdim=True)
    expected = F.interpolate((grid - low) / (high - low), size=(32, 32), mode="bilinear", align_corners=False)

    returned, returned_grid = method.surgery_similarity(images, normalized=True)
    assert returned_grid == (4, 4)
    torch.testing.assert_close(returned, similarity, atol=ATOL, rtol=0)  # CLS row included
    torch.testing.assert_close(method.similarity_map(images, normalized=True), expected, atol=ATOL, rtol=0)
    method.configure_protocol(resize="none", slide_crop=0, score="minmax")
    logits = method.dense_logits(list(images), [(32, 32)] * 2, normalized=True)
    torch.testing.assert_close(torch.stack(logits), expected, atol=ATOL, rtol=0)
    upsampled = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    up_low, up_high = upsampled.amin(dim=(2, 3), keepdim=True), upsampled.amax(dim=(2, 3), keepdim=True)
    assert ((upsampled - up_low) / (up_high - up_low) - expected).abs().max() > 1e-2  # the orders differ
    result = method.segment(list(images * 40 + 128))[0]
    assert result.scores.shape == (4, 32, 32) and torch.equal(result.labels, result.scores.argmax(0))


def test_dense_logits_accepts_normalised_input(tiny_vit, images) -> None:
    """normalized=True skips the CLIP normalisation: identical to feeding (images * std + mean) un-normalised."""
    method = SCLIP(clip=tiny_vit)
    method.set_vocabulary(["cat", "dog"])
    method.configure_protocol(resize="none", slide_crop=0)
    tokens = reference_last_block(tiny_vit.model.visual, images, native_pos(tiny_vit), lambda h, q, k, v, s: (
        softmax_attend(q, q, v, s) + softmax_attend(k, k, v, s)))
    patches = tokens[:, 1:] / tokens[:, 1:].norm(dim=-1, keepdim=True)
    cos = (patches @ method.vocabulary.classifier.embeddings.T).transpose(1, 2).reshape(2, 2, 4, 4)
    expected = F.interpolate(cos, size=(32, 32), mode="bilinear", align_corners=False)
    normalised = method.dense_logits(list(images), [(32, 32)] * 2, normalized=True)
    torch.testing.assert_close(torch.stack(normalised), expected, atol=ATOL, rtol=0)
    mean, std = tiny_vit.pixel_mean.view(3, 1, 1), tiny_vit.pixel_std.view(3, 1, 1)
    raw = method.dense_logits(list(images * std + mean), [(32, 32)] * 2)
    torch.testing.assert_close(torch.stack(raw), expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="normalized=True expects float images"):
        method.dense_logits([torch.zeros(3, 32, 32, dtype=torch.uint8)], [(32, 32)], normalized=True)


def test_gem_returns_its_original_path_tokens(tiny_vit, images) -> None:
    """encode_tokens: GEM path tokens and the original path (the unmodified ViT, as GEM's feat_ori)."""
    method = GEM(clip=tiny_vit, depth=2)
    output = method.encode_tokens(images, normalized=True)
    gem = reference_parallel(tiny_vit.model.visual, images, native_pos(tiny_vit), 2,
                             lambda h, q, k, v, s: gem_reference(h, q, k, v, s))
    original = reference_last_block(tiny_vit.model.visual, images, native_pos(tiny_vit))
    torch.testing.assert_close(output.tokens, gem, atol=ATOL, rtol=0)
    torch.testing.assert_close(output.original, original, atol=ATOL, rtol=0)
    assert method.encode_tokens(images, normalized=True, return_original=False).original is None

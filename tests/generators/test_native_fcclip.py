"""Native FC-CLIP / MAFT+ generators (issue 13 item 2; maskclippp.md §8.2, §8.6) on a tiny random ConvNeXt CLIP:
features, text classifier, class head formula, checkpoint layouts, pre-processing and a MaskCLIP++ run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import WeightsNotFoundError, create_clip
from ovs.generators.native import NativeFCCLIP
from ovs.generators.native.fcclip import convnext_features
from tests.conftest import TINY_CONVNEXT
from tests.generators.conftest import maskclippp_on_fake_ade150

QUERIES = 6
TINY = dict(clip_model=TINY_CONVNEXT, clip_pretrained=None, num_queries=QUERIES, dec_layers=3, hidden_dim=32,
            conv_dim=32, mask_dim=32, enc_layers=2, enc_ffn_dim=64, nheads=4, dim_feedforward=64, min_size_test=64,
            max_size_test=128, image_size=64)
VOCABULARY = [["cat", "kitty"], ["dog"], ["sky", "heaven", "air"]]
VILD_TEMPLATES = [  # FC-CLIP fcclip.py VILD_PROMPT, copied from the reference repository
    "a photo of a {}.", "This is a photo of a {}", "There is a {} in the scene", "There is the {} in the scene",
    "a photo of a {} in the scene", "a photo of a small {}.", "a photo of a medium {}.", "a photo of a large {}.",
    "This is a photo of a small {}.", "This is a photo of a medium {}.", "This is a photo of a large {}.",
    "There is a small {} in the scene.", "There is a medium {} in the scene.", "There is a large {} in the scene.",
]
# native name -> FC-CLIP / MAFT+ checkpoint name (the reference's module names: fcclip.py, fcclip_head.py,
# msdeformattn.py, fcclip_transformer_decoder.py), written independently of ovs's key map
TO_FCCLIP = [
    (r"pixel_decoder\.input_proj\.(.+)", r"sem_seg_head.pixel_decoder.input_proj.\1"),
    (r"pixel_decoder\.level_embed", "sem_seg_head.pixel_decoder.transformer.level_embed"),
    (r"pixel_decoder\.layers\.(.+)", r"sem_seg_head.pixel_decoder.transformer.encoder.layers.\1"),
    (r"pixel_decoder\.mask_features\.(.+)", r"sem_seg_head.pixel_decoder.mask_features.\1"),
    (r"pixel_decoder\.lateral_convs\.0\.0\.weight", "sem_seg_head.pixel_decoder.adapter_1.weight"),
    (r"pixel_decoder\.lateral_convs\.0\.1\.(.+)", r"sem_seg_head.pixel_decoder.adapter_1.norm.\1"),
    (r"pixel_decoder\.output_convs\.0\.0\.weight", "sem_seg_head.pixel_decoder.layer_1.weight"),
    (r"pixel_decoder\.output_convs\.0\.1\.(.+)", r"sem_seg_head.pixel_decoder.layer_1.norm.\1"),
    (r"decoder\.cross_attention\.(\d+)\.attn\.(.+)",
     r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.multihead_attn.\2"),
    (r"decoder\.cross_attention\.(\d+)\.norm\.(.+)",
     r"sem_seg_head.predictor.transformer_cross_attention_layers.\1.norm.\2"),
    (r"decoder\.self_attention\.(\d+)\.attn\.(.+)",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.self_attn.\2"),
    (r"decoder\.self_attention\.(\d+)\.norm\.(.+)",
     r"sem_seg_head.predictor.transformer_self_attention_layers.\1.norm.\2"),
    (r"decoder\.ffn\.(.+)", r"sem_seg_head.predictor.transformer_ffn_layers.\1"),
    (r"decoder\.class_embed\.class_embed\.(.+)", r"sem_seg_head.predictor.class_embed.\1"),
    (r"decoder\.class_embed\.logit_scale", "sem_seg_head.predictor.logit_scale"),
    (r"decoder\.class_embed\.void_embedding\.weight", "void_embedding.weight"),
    (r"decoder\.mask_pooling_proj\.(.+)", r"sem_seg_head.predictor._mask_pooling_proj.\1"),
    (r"decoder\.(decoder_norm|query_feat|query_embed|level_embed|mask_embed|input_proj)\.(.+)",
     r"sem_seg_head.predictor.\1.\2"),
]


def fcclip_layout(head_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The head's tensors under FC-CLIP's names (every native name must have one)."""
    out = {}
    for key, value in head_state.items():
        names = [re.sub(p, r, key) for p, r in TO_FCCLIP if re.fullmatch(p, key)]
        assert names, key
        out[names[0]] = value.clone()
    return out


def perturb_(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


def run(generator: NativeFCCLIP, image: torch.Tensor):  # type: ignore[no-untyped-def]
    (proposals,) = generator({"image": [image], "meta": [{"height": image.shape[1], "width": image.shape[2]}]})
    return proposals


@pytest.fixture(scope="module")
def generator() -> NativeFCCLIP:
    torch.manual_seed(0)
    model = NativeFCCLIP(**TINY)
    model.set_vocabulary(VOCABULARY)
    return model


def test_backbone_features_are_the_convnext_stages(generator: NativeFCCLIP) -> None:
    """res2..res5 = timm's own stage outputs (``forward_intermediates``: stem, then stages 1-4), res5 = the trunk's
    ``forward_features``; strides 4 / 8 / 16 / 32 and the stages' widths."""
    trunk = generator.clip.model.visual.trunk
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = convnext_features(generator.clip, images)
        expected = trunk.forward_intermediates(images, indices=4, intermediates_only=True)
        last = trunk.forward_features(images)
    assert list(features) == ["res2", "res3", "res4", "res5"]
    for (name, got), want, stride, width in zip(features.items(), expected, (4, 8, 16, 32), (40, 80, 160, 320)):
        assert got.shape == (2, width, 64 // stride, 96 // stride), name
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(features["res5"], last, atol=0, rtol=0)


def test_text_classifier_is_the_template_mean_of_normalised_embeddings(generator: NativeFCCLIP) -> None:
    model = generator.clip.model
    tokenizer = generator.clip.tokenizer
    names = [name for synonyms in VOCABULARY for name in synonyms]
    with torch.no_grad():
        rows = []
        for name in names:
            sentences = model.encode_text(tokenizer([t.format(name) for t in VILD_TEMPLATES]))  # [14, D]
            rows.append(F.normalize(F.normalize(sentences, dim=-1).mean(0), dim=0))
    head = generator.head.class_head
    torch.testing.assert_close(head.text, torch.stack(rows), atol=1e-6, rtol=0)
    assert head.synonym_class.tolist() == [0, 0, 1, 2, 2, 2] and head.num_classes == 3


def test_class_logits_follow_the_fcclip_formula(generator: NativeFCCLIP) -> None:
    """logit(q, k) = min(e^s, 100) · max over k's synonyms of cos(MLP(norm(q) + proj(mean of F over m_q > 0)), t),
    void = the same with the void embedding (FC-CLIP ``forward_prediction_heads``), computed query by query."""
    decoder = generator.head.decoder
    head = generator.head.class_head
    torch.manual_seed(3)
    output, features = torch.randn(1, QUERIES, 32), torch.randn(1, 32, 8, 12)
    with torch.no_grad():
        head.logit_scale.fill_(2.0)
        logits, masks, _ = decoder.predict(output, features, (4, 6))
        decoded = decoder.decoder_norm(output)[0]
        mask_logits = decoder.mask_embed(decoded) @ features[0].flatten(1)  # [Q, h w]
        assert 0 < int((mask_logits > 0).sum()) < mask_logits.numel()
        expected = []
        for q in range(QUERIES):
            inside = features[0].flatten(1)[:, mask_logits[q] > 0]  # [C, n]
            pooled = inside.mean(1) if inside.shape[1] else torch.zeros(32)
            embed = F.normalize(head.class_embed(decoded[q] + decoder.mask_pooling_proj(pooled)), dim=0)
            cos = head.text @ embed
            row = [max(float(cos[i]) for i, c in enumerate(head.synonym_class.tolist()) if c == k) for k in range(3)]
            row.append(float(F.normalize(head.void_embedding.weight[0], dim=0) @ embed))
            expected.append([min(torch.e ** 2.0, 100.0) * value for value in row])
    torch.testing.assert_close(logits[0], torch.tensor(expected), atol=1e-4, rtol=0)
    torch.testing.assert_close(masks[0].flatten(1), mask_logits, atol=1e-5, rtol=0)


def test_preprocessing_uses_clip_mean_std_in_255_units_and_pads_to_32() -> None:
    torch.manual_seed(0)
    model = NativeFCCLIP(**{**TINY, "min_size_test": None})
    image = torch.tensor([200, 100, 50], dtype=torch.uint8)[:, None, None].expand(3, 45, 70).contiguous()
    x, size = model.preprocess(image)
    assert size == (64, 99)  # short side 64, long side int(70 * 64 / 45) = 99 (MaskCLIP++'s truncation), not 100
    assert x.shape == (1, 3, 64, 128)
    mean, std = (122.7709383, 116.7460125, 104.09373615), (68.5005327, 66.6321579, 70.32316305)
    for c, value in enumerate((200, 100, 50)):
        torch.testing.assert_close(x[0, c, :64, :99], torch.full((64, 99), (value - mean[c]) / std[c]))
    assert float(x[0, :, :, 99:].abs().max()) == 0.0
    mapped = NativeFCCLIP(**TINY)  # mapper resize 45 x 70 -> 64 x 100 (detectron2 rounding) first
    assert mapped.preprocess(image)[1] == (64, 100)


def test_end_to_end_proposals_and_a_constructed_argmax(generator: NativeFCCLIP) -> None:
    """Shapes, soft masks in [0, 1], K + 1 logits; when ``class_embed`` outputs a synonym's own text embedding
    ("heaven" of class 2) every query's argmax is class 2 at logit min(e^s, 100) · 1; with the void embedding, void."""
    torch.manual_seed(4)
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8)
    proposals = run(generator, image)
    assert proposals.masks.shape == (QUERIES, 45, 70) and proposals.logits.shape == (QUERIES, 4)
    assert proposals.logits_vocabulary is None and generator.open_vocabulary
    assert 0.0 <= float(proposals.masks.min()) and float(proposals.masks.max()) <= 1.0
    assert float(proposals.masks.std()) > 1e-4
    head = generator.head.class_head
    last = head.class_embed.layers[-1]
    saved = (last.weight.clone(), last.bias.clone())
    try:
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(3.0 * head.text[4])  # "heaven"
            scale = float(head.logit_scale.exp().clamp(max=100))
            logits = run(generator, image).logits
            assert logits.argmax(1).tolist() == [2] * QUERIES
            torch.testing.assert_close(logits[:, 2], torch.full((QUERIES,), scale), atol=1e-4, rtol=0)
            cos_void = float(F.normalize(head.void_embedding.weight[0], dim=0) @ head.text[4])
            torch.testing.assert_close(logits[:, 3], torch.full((QUERIES,), scale * cos_void), atol=1e-4, rtol=0)
            last.bias.copy_(head.void_embedding.weight[0])
            assert run(generator, image).logits.argmax(1).tolist() == [3] * QUERIES
    finally:
        with torch.no_grad():
            last.weight.copy_(saved[0])
            last.bias.copy_(saved[1])


def test_fcclip_checkpoint_round_trips(tmp_path: Path) -> None:
    """A head written under FC-CLIP's names (+ its frozen CLIP and the loss buffer, both unused) loads exactly and
    gives the same proposals; the CLIP keeps its own weights."""
    torch.manual_seed(0)
    source = NativeFCCLIP(**TINY)
    perturb_(source.head)
    state = fcclip_layout(source.head.state_dict())
    for name in ("sem_seg_head.predictor._mask_pooling_proj.0.weight",
                 "sem_seg_head.predictor.class_embed.layers.2.bias", "sem_seg_head.predictor.logit_scale",
                 "void_embedding.weight", "sem_seg_head.pixel_decoder.adapter_1.norm.weight",
                 "sem_seg_head.pixel_decoder.transformer.level_embed",
                 "sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight"):
        assert name in state, name  # names of the reference's modules
    other_clip = {f"backbone.clip_model.{k}": v + 1.0 for k, v in create_clip(TINY_CONVNEXT).model.state_dict().items()}
    path = tmp_path / "fcclip_coco-pan_test.pth"
    torch.save({"model": {**state, **other_clip, "criterion.empty_weight": torch.ones(134)}, "iteration": 3}, path)
    torch.manual_seed(0)
    loaded = NativeFCCLIP(weights=str(path), **TINY)
    for key, value in source.head.state_dict().items():
        torch.testing.assert_close(loaded.head.state_dict()[key], value, atol=0, rtol=0, msg=key)
    for key, value in source.clip.model.state_dict().items():
        torch.testing.assert_close(loaded.clip.model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    source.set_vocabulary(VOCABULARY)
    loaded.set_vocabulary(VOCABULARY)
    image = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)
    want, got = run(source, image), run(loaded, image)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.masks, want.masks, atol=1e-5, rtol=0)


def test_maft_checkpoint_loads_the_clip_and_drops_cdt(tmp_path: Path) -> None:
    """MAFT+ layout: head + fine-tuned CLIP under ``backbone.clip_model.*`` (loaded into visual and text towers) +
    CDT, teacher CLIP and loss tensors (dropped)."""
    torch.manual_seed(0)
    source = NativeFCCLIP(**TINY)
    perturb_(source.head)
    torch.manual_seed(7)
    tuned = create_clip(TINY_CONVNEXT).model.state_dict()
    state = {
        **fcclip_layout(source.head.state_dict()),
        **{f"backbone.clip_model.{k}": v for k, v in tuned.items()},
        **{f"backbone_t.clip_model.{k}": v for k, v in tuned.items()},
        "cdt.cross_atten.multihead_attn.in_proj_weight": torch.randn(96, 32),
        "cdt.cross_atten.norm.weight": torch.ones(32),
        "criterion.empty_weight": torch.ones(172),
    }
    path = tmp_path / "maftp_test.pth"
    torch.save({"model": state}, path)
    torch.manual_seed(0)
    plain = NativeFCCLIP(**TINY)
    torch.manual_seed(0)
    loaded = NativeFCCLIP(weights=str(path), clip_from_checkpoint=True, **TINY)
    before = plain.clip.model.state_dict()
    for key, value in tuned.items():
        torch.testing.assert_close(loaded.clip.model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    assert not torch.equal(before["visual.trunk.stem.0.weight"], tuned["visual.trunk.stem.0.weight"])
    assert not torch.equal(before["transformer.resblocks.0.attn.in_proj_weight"],
                           tuned["transformer.resblocks.0.attn.in_proj_weight"])
    for key, value in source.head.state_dict().items():
        torch.testing.assert_close(loaded.head.state_dict()[key], value, atol=0, rtol=0, msg=key)
    plain.set_vocabulary(VOCABULARY)
    loaded.set_vocabulary(VOCABULARY)
    assert float((plain.head.class_head.text - loaded.head.class_head.text).abs().max()) > 1e-3  # text tower loaded
    del state["backbone.clip_model.ln_final.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"maftp_test\.pth.*missing model keys \['ln_final\.weight'\]"):
        NativeFCCLIP(weights=str(path), clip_from_checkpoint=True, **TINY)


@pytest.mark.parametrize("change", ["unknown_head", "unknown_top", "shape", "missing"])
def test_bad_checkpoints_fail_naming_the_file(tmp_path: Path, change: str) -> None:
    torch.manual_seed(0)
    state = fcclip_layout(NativeFCCLIP(**TINY).head.state_dict())
    if change == "unknown_head":
        state["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(2)
        pattern = r"bad\.pth.*1 unmatched checkpoint keys \['sem_seg_head\.predictor\.extra_head\.weight'\]"
    elif change == "unknown_top":
        state["out_vocab_adapter.weight"] = torch.zeros(2)
        pattern = r"bad\.pth.*1 unmatched checkpoint keys \['out_vocab_adapter\.weight'\]"
    elif change == "shape":
        state["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(QUERIES + 1, 32)
        pattern = r"bad\.pth.*1 shape mismatches \['decoder\.query_feat\.weight \(7, 32\) vs \(6, 32\)'\]"
    else:
        del state["void_embedding.weight"]
        pattern = r"bad\.pth.*1 missing model keys \['decoder\.class_embed\.void_embedding\.weight'\]"
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=pattern):
        NativeFCCLIP(weights=str(path), **TINY)


def test_missing_weights_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.pth not found\. Download the generator weights"):
        NativeFCCLIP(weights=str(tmp_path / "nothing.pth"), **TINY)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsNotFoundError, match=r"generator CLIP.*clip_pretrained.*laion_aesthetic_s13b_b82k"):
        NativeFCCLIP(clip_model="convnext_base_w_320", clip_pretrained="laion_aesthetic_s13b_b82k_augreg",
                     clip_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="set_vocabulary"):
        NativeFCCLIP(**TINY)({"image": [torch.zeros(3, 8, 8, dtype=torch.uint8)]})


def test_maskclippp_runs_with_the_native_fcclip(tmp_path: Path) -> None:
    """MaskCLIP++ hands the ADE-150 vocabulary to the generator (151 logit columns, no look-up table), takes its
    COCO-Panoptic training set as the seen set (64 ADE classes) and produces every metric."""
    torch.manual_seed(0)
    generator = NativeFCCLIP(**{**TINY, "training_vocabulary": "coco_panoptic"})
    model, metrics = maskclippp_on_fake_ade150(generator, tmp_path)
    assert generator.head.class_head.num_classes == 150 and len(generator.vocabulary) == 150
    assert model._luts == {} and int(model.generator_seen.sum()) == 64
    for key in ("test/mIoU", "test/mIoU_seen", "test/PQ", "test/AP"):
        assert 0.0 <= float(metrics[key]) <= 100.0, key


# config -> (clip, queries, MAFT+, test-mapper min / max size) from MaskCLIP++'s configs (spec §8.2 step 1, §8.6)
REFERENCE_CONFIGS = {
    "maskclip++_convnext_b_fcclip_b": ("convnext_base_w_320", 250, False, 800, 2560),
    "maskclip++_convnext_l_fcclip_l": ("convnext_large_d_320", 250, False, 800, 2560),
    "maskclip++_eva02_l14_coco_stuff_wtext_fcclip_l": ("convnext_large_d_320", 250, False, 512, 2048),
    "maskclip++_eva02_l14_coco_stuff_wtext_fcclip_l_ens": ("convnext_large_d_320", 250, False, 512, 2048),
    "maskclip++_convnext_b_coco_stuff_maft_b": ("convnext_base_w_320", 100, True, 1024, 2048),
    "maskclip++_convnext_b_coco_stuff_maft_b_ens": ("convnext_base_w_320", 100, True, 1024, 2048),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l": ("convnext_large_d_320", 100, True, 512, 2048),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l_ens": ("convnext_large_d_320", 100, True, 512, 2048),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l_pan": ("convnext_large_d_320", 100, True, 512, 2048),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l_pan_ens": ("convnext_large_d_320", 100, True, 512, 2048),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_configs_use_the_native_generator_with_the_reference_settings(name: str) -> None:
    import yaml

    config = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    generator = yaml.safe_load(config.read_text())["model"]["init_args"]["generator"]
    args = generator["init_args"]
    clip, queries, maft, low, high = REFERENCE_CONFIGS[name]
    assert generator["class_path"] == "ovs.generators.native.NativeFCCLIP"
    assert (args["clip_model"], args["num_queries"], args.get("clip_from_checkpoint", False)) == (clip, queries, maft)
    assert (args["min_size_test"], args["max_size_test"], args["image_size"], args["dec_layers"]) == (low, high, 800, 9)
    assert Path(args["weights"]).name.startswith("maftp_" if maft else "fcclip_")
    real = ("weights", "clip_model", "clip_pretrained", "clip_from_checkpoint")
    tiny = {k: v for k, v in args.items() if k not in real}
    built = NativeFCCLIP(clip_model=TINY_CONVNEXT, clip_pretrained=None, **tiny)
    assert built.head.decoder.query_feat.num_embeddings == queries and len(built.head.decoder.ffn) == 9

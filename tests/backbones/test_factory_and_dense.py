"""Model creation (offline weights, errors), ConvNeXt / ResNet dense features and the text classifier cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import WeightsNotFoundError, build_text_classifier, create_clip
from ovs.backbones import text as text_module
from tests.conftest import TINY_CONVNEXT, TINY_RESNET, TINY_VIT


def test_convnext_dense_shapes_and_head_after_pooling() -> None:
    clip = create_clip(TINY_CONVNEXT)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        feats, p_embs = clip.dense.dense(x)
        pooled = feats.mean(dim=(2, 3))  # uniform mask = global average pooling
        global_emb = clip.model.visual(x)
    assert feats.shape == (2, clip.dense.feature_dim, 3, 4)
    assert p_embs.shape == (2, 32, 3, 4)
    # MaskCLIP++ §3.2: LayerNorm after pooling + projection reproduces the CLIP image embedding for a full mask
    torch.testing.assert_close(clip.dense.head(pooled), global_emb, atol=1e-5, rtol=1e-5)


def test_resnet_dense_shapes_and_attention_pool_equals_open_clip() -> None:
    clip = create_clip(TINY_RESNET)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = clip.dense.pooled(x)
        reference = clip.model.visual(x)
        dense = clip.dense.dense(x)
    torch.testing.assert_close(pooled, reference, atol=1e-5, rtol=1e-5)
    assert dense.shape == (2, 32, 2, 2)


def test_resnet_value_path_is_attention_to_self_only() -> None:
    clip = create_clip(TINY_RESNET)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = clip.dense.features(x)
        tokens = clip.dense.tokens(feats)[:, 1:]
        n = tokens.shape[1]
        diagonal = torch.full((1, clip.dense.num_heads, n, n), float("-inf"))
        diagonal[..., torch.arange(n), torch.arange(n)] = 0
        via_attention = clip.dense.attend(tokens, tokens, diagonal)
    torch.testing.assert_close(clip.dense.dense(x).flatten(2).transpose(1, 2), via_attention, atol=1e-5, rtol=1e-5)


def test_text_classifier_normalise_mean_normalise_and_cache(tiny_vit) -> None:
    text_module.clear_cache()
    names = [["cat", "kitty"], ["dog"]]
    tc = build_text_classifier(tiny_vit, names, ["a photo of a {}.", "a {}"])
    assert text_module.cache_info() == 1
    with torch.no_grad():
        raw = tiny_vit.model.encode_text(tiny_vit.tokenizer(["a photo of a cat.", "a cat"]))
    expected = F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(tc.embeddings[0], expected, atol=1e-6, rtol=0)
    assert tc.name_to_class.tolist() == [0, 0, 1]
    assert tc.per_template.shape == (3, 2, 32)
    calls = []
    original = tiny_vit.encode_text
    tiny_vit.encode_text = lambda texts, batch_size=512: calls.append(texts) or original(texts)
    try:
        build_text_classifier(tiny_vit, names, ["a photo of a {}.", "a {}"])  # hit
        assert calls == []
        build_text_classifier(tiny_vit, [["cat"]], ["a {}"])  # miss
        assert len(calls) == 1
    finally:
        del tiny_vit.encode_text
    assert text_module.cache_info() == 2


def test_text_cache_invalidated_when_text_weights_change() -> None:
    clip = create_clip(TINY_VIT)
    first = build_text_classifier(clip, [["cat"]], "single").embeddings
    with torch.no_grad():
        clip.model.token_embedding.weight.mul_(2.0).add_(0.5)
    second = build_text_classifier(clip, [["cat"]], "single").embeddings
    assert not torch.allclose(first, second)


def test_text_cache_key_is_never_reused_for_a_new_model() -> None:
    """Random models of one config share ``identity`` and fresh parameter versions, and CPython hands a freed
    object's address (``id()``) to the next one: a cache keyed on ``id`` would serve a dead model's embeddings to a
    new one. The key's model token must differ for every model object ever seen."""
    ids, tokens = [], []
    for _ in range(20):
        model = torch.nn.Linear(1, 1)
        ids.append(id(model))
        tokens.append(text_module._model_token(model))
        del model
    assert len(set(ids)) < len(ids)  # the addresses were reused, so this test can tell the two keys apart
    assert len(set(tokens)) == len(tokens)


def test_disk_cache_for_pretrained_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.pt"
    torch.save(create_clip(TINY_VIT).model.state_dict(), ckpt)
    clip = create_clip(TINY_VIT, pretrained=ckpt)
    build_text_classifier(clip, [["cat"], ["dog"]], "single", cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("text_*.pt"))
    assert len(files) == 1
    text_module.clear_cache()
    again = build_text_classifier(clip, [["cat"], ["dog"]], "single", cache_dir=tmp_path / "cache")
    torch.testing.assert_close(again.per_template, torch.load(files[0]))


def test_merge_synonyms_takes_max(tiny_vit) -> None:
    tc = build_text_classifier(tiny_vit, [["a", "b"], ["c"]], "single")
    scores = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]]).T.unsqueeze(0)  # [1, K_names=3, 2]
    merged = tc.merge_synonyms(scores, dim=1)
    assert merged.tolist() == [[[3.0, 5.0], [2.0, 0.0]]]


def test_checkpoint_roundtrip_and_strictness(tmp_path: Path) -> None:
    source = create_clip(TINY_VIT)
    ckpt = tmp_path / "w.pt"
    torch.save({"state_dict": source.model.state_dict(), "ovs_meta": {"quick_gelu": True}}, ckpt)
    loaded = create_clip(TINY_VIT, pretrained=ckpt)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.visual(x), source.model.visual(x))
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in source.model.state_dict().items() if k.startswith("visual.")}, partial)
    with pytest.raises(ValueError, match="missing keys"):
        create_clip(TINY_VIT, pretrained=partial)
    create_clip(TINY_VIT, pretrained=partial, strict=False)


def test_pruned_token_embedding_is_expanded(tmp_path: Path) -> None:
    source = create_clip(TINY_VIT)
    state = source.model.state_dict()
    table = state.pop("token_embedding.weight")
    ids = torch.tensor([0, 5, 49406, 49407])
    ckpt = tmp_path / "pruned.pt"
    torch.save({"state_dict": state, "pruned_token_embedding": {"ids": ids, "rows": table[ids],
                                                                 "num_embeddings": table.shape[0]}}, ckpt)
    loaded = create_clip(TINY_VIT, pretrained=ckpt)
    weight = loaded.model.token_embedding.weight
    torch.testing.assert_close(weight[ids], table[ids])
    assert weight[1].abs().sum() == 0


def test_missing_weights_file_message(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        create_clip("ViT-B-16", pretrained=str(tmp_path / "nope.pt"))
    assert "nope.pt" in str(info.value) and "ViT-B-16" in str(info.value)


def test_uncached_pretrained_tag_names_model_tag_places_and_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        create_clip("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "ViT-B-16" in message and "'openai'" in message
    assert str(tmp_path / "hub") in message and "Fix:" in message


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="Unknown open_clip model"):
        create_clip("ViT-Q-99")

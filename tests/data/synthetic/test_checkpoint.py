"""Pruned fp16 CLIP checkpoints: round trip and compatibility with ovs.backbones."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from ovs.backbones import load_state_dict_file
from ovs.data.synthetic.checkpoint import TOKEN_EMBEDDING_KEY, load_pruned_clip_state, save_pruned_clip
from tests.conftest import TINY_VIT


def test_round_trip(tmp_path: Path) -> None:
    model = open_clip.create_model(TINY_VIT)
    keep = [0, 5, 49406, 49407, 5]
    path = save_pruned_clip(model, tmp_path / "ckpt.pt", keep, {"model_name": TINY_VIT, "quick_gelu": True})
    state, meta = load_pruned_clip_state(path)
    assert meta == {"model_name": TINY_VIT, "quick_gelu": True}
    original = model.state_dict()
    assert set(state) == set(original)
    table = state[TOKEN_EMBEDDING_KEY]
    assert table.shape == original[TOKEN_EMBEDDING_KEY].shape and table.dtype == torch.float32
    kept = torch.tensor(sorted(set(keep)))
    assert torch.allclose(table[kept], original[TOKEN_EMBEDDING_KEY][kept], atol=1e-3)
    dropped = torch.ones(len(table), dtype=torch.bool)
    dropped[kept] = False
    assert not bool(table[dropped].any())
    for key, value in original.items():
        if key != TOKEN_EMBEDDING_KEY and value.is_floating_point():
            assert torch.equal(state[key], value.half().float()), key
    # The backbone factory reads the same file to the same weights.
    factory_state, factory_meta = load_state_dict_file(path)
    assert factory_meta == meta
    assert all(torch.equal(factory_state[k].float(), state[k]) for k in state)
    model.load_state_dict(state)


def test_invalid_inputs(tmp_path: Path) -> None:
    model = open_clip.create_model(TINY_VIT)
    with pytest.raises(ValueError, match="used_token_ids"):
        save_pruned_clip(model, tmp_path / "a.pt", [], {})
    with pytest.raises(ValueError, match="used_token_ids"):
        save_pruned_clip(model, tmp_path / "a.pt", [49408], {})
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a pruned"):
        load_pruned_clip_state(tmp_path / "plain.pt")

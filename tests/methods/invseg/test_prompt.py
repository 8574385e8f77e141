"""Prompt assembly and the token-to-category map with the real CLIP BPE (spec §6)."""

from __future__ import annotations

import pytest
import torch

from ovs.methods.invseg.prompt import build_prompts


def test_token_positions_of_single_and_multi_token_names(tiny_sd) -> None:
    tokenizer = tiny_sd.tokenizer
    prompts = build_prompts(tokenizer, ["cat", "tvmonitor", "potted plant", "background"])
    assert prompts.texts == ["cat tvmonitor potted plant background"]
    ids = prompts.input_ids[0].tolist()
    # ids checked against open_clip's tokenizer: BOS, cat, tv, monitor, potted, plant, background, EOS, pad ...
    assert ids[:8] == [49406, 2368, 3197, 10198, 48581, 3912, 5994, 49407]
    assert ids[8:] == [tokenizer.pad_token_id] * 69
    positions = {c: prompts.token_weights[0, :, c].nonzero().flatten().tolist() for c in range(4)}
    assert positions == {0: [1], 1: [2, 3], 2: [4, 5], 3: [6]}
    torch.testing.assert_close(prompts.token_weights[0].sum(0), torch.ones(4))
    assert prompts.class_token_mask[0].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]


def test_comma_separator_and_template_shift_positions(tiny_sd) -> None:
    prompts = build_prompts(tiny_sd.tokenizer, ["dog", "background"], ", ", "a photograph of {}")
    assert prompts.texts == ["a photograph of dog, background"]
    tokens = tiny_sd.tokenizer.convert_ids_to_tokens(prompts.input_ids[0, :8].tolist())
    assert tokens[1:7] == ["a</w>", "photograph</w>", "of</w>", "dog</w>", ",</w>", "background</w>"]
    assert prompts.token_weights[0, :, 0].nonzero().flatten().tolist() == [4]
    assert prompts.token_weights[0, :, 1].nonzero().flatten().tolist() == [6]


def test_names_beyond_75_tokens_go_to_a_second_prompt(tiny_sd) -> None:
    names = ["potted plant"] * 40 + ["background"]  # 2 tokens each: 37 names fill 74 of the 75 content tokens
    prompts = build_prompts(tiny_sd.tokenizer, names)
    assert len(prompts.texts) == 2
    owner = prompts.token_weights.sum(1) > 0  # [P, C]
    assert (owner.sum(0) == 1).all() and owner[0, :37].all() and owner[1, 37:].all()
    assert prompts.token_weights[1, :, 37].nonzero().flatten().tolist() == [1, 2]
    for p, text in enumerate(prompts.texts):
        assert text == " ".join(n for n, own in zip(names, owner[p]) if own)


def test_a_separator_that_merges_tokens_is_rejected(tiny_sd) -> None:
    with pytest.raises(ValueError, match="does not equal the concatenation"):
        build_prompts(tiny_sd.tokenizer, ["cat", "s"], separator="")

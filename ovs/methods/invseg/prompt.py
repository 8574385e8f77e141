"""The concatenated class-name prompt and its token-to-category map (paper §"Learnable prompt"; spec §6, O5, O12).

The prompt is ``template.format(separator.join(names))`` with "background" last. Each name is tokenised on its own
(no BOS / EOS) and its positions found by walking the prompt; the assembled ids must equal the tokenisation of the
full prompt. Names that do not fit 75 content tokens go to further prompts (one batch row each), and the categories
of all prompts are concatenated after capture (spec §6: a change to the method, logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

BACKGROUND = "background"


@dataclass
class PromptBatch:
    """Tokenised prompts and where each category's tokens sit.

    Attributes:
        texts: the prompt strings, one per batch row ``P``.
        input_ids: ``int64 [P, T]`` (``T`` = the tokenizer's ``model_max_length``, 77 for SD).
        token_weights: ``float [P, T, C]``: ``1 / n_c`` at the tokens of category ``c`` in its prompt (O5 mean).
        names: the ``C`` category names in order.
    """

    texts: list[str]
    input_ids: Tensor
    token_weights: Tensor
    names: list[str]

    @property
    def class_token_mask(self) -> Tensor:
        """``bool [P, T]``: tokens that belong to a category (the ``class_only`` learnable rows)."""
        return self.token_weights.sum(dim=-1) > 0


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def build_prompts(tokenizer: Any, names: Sequence[str], separator: str = " ", template: str = "{}") -> PromptBatch:
    """Prompts for ``names`` (the caller appends "background", spec §8) and their token-to-category weights."""
    if not names:
        raise ValueError("build_prompts needs at least one category name.")
    if template.count("{}") != 1:
        raise ValueError(f"prompt template must contain one '{{}}', got {template!r}.")
    length = int(tokenizer.model_max_length)
    prefix, suffix = (_ids(tokenizer, part) if part.strip() else [] for part in template.split("{}"))
    sep = _ids(tokenizer, separator) if separator.strip() else []
    capacity = length - 2 - len(prefix) - len(suffix)  # BOS and EOS
    name_ids = [_ids(tokenizer, name) for name in names]
    too_long = [n for n, ids in zip(names, name_ids) if len(ids) > capacity]
    if too_long or any(not ids for ids in name_ids):
        raise ValueError(f"Category names {too_long or names} do not fit one {length}-token prompt (or are empty).")
    groups: list[list[int]] = [[]]
    used = 0
    for index, ids in enumerate(name_ids):
        extra = len(ids) + (len(sep) if groups[-1] else 0)
        if groups[-1] and used + extra > capacity:
            groups.append([])
            used, extra = 0, len(ids)
        groups[-1].append(index)
        used += extra
    if len(groups) > 1:
        logger.warning("InvSeg: %d categories need %d prompts; cross-attention no longer spans all of them "
                       "(spec §6).", len(names), len(groups))
    texts, rows = [], []
    weights = torch.zeros(len(groups), length, len(names))
    for p, group in enumerate(groups):
        text = template.format(separator.join(names[i] for i in group))
        position = 1 + len(prefix)
        assembled = list(prefix)
        for k, index in enumerate(group):
            if k:
                assembled += sep
                position += len(sep)
            ids = name_ids[index]
            weights[p, position:position + len(ids), index] = 1.0 / len(ids)
            assembled += ids
            position += len(ids)
        assembled += suffix
        full = _ids(tokenizer, text)
        if full != assembled:
            raise ValueError(f"Tokenising {text!r} does not equal the concatenation of its names' tokens; use a "
                             "separator the tokenizer splits on (' ' or ', ').")
        encoded = tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        texts.append(text)
        rows.append(encoded.input_ids[0])
    return PromptBatch(texts, torch.stack(rows), weights, list(names))

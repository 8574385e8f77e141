"""Compact CLIP checkpoints: fp16 weights and a pruned token-embedding table.

The file is the ovs checkpoint dict that :func:`ovs.backbones.load_state_dict_file` reads::

    {
        "state_dict": {name: fp16 tensor, ...},          # without "token_embedding.weight"
        "pruned_token_embedding": {
            "ids": int64 [n],                            # sorted token ids that are kept
            "rows": fp16 [n, D],                         # their embedding rows
            "num_embeddings": int,                       # full vocabulary size (49408 for the CLIP BPE)
        },
        "ovs_meta": {...},                               # JSON-like metadata (model name, quick_gelu, metrics ...)
    }

Token rows that are not kept are restored as zeros: a model that only ever saw the synthetic vocabulary has random
(untrained) rows there, so zeros change nothing meaningful and save ~12 MB for a 128-wide text tower.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

TOKEN_EMBEDDING_KEY = "token_embedding.weight"
"""State-dict key of the open_clip text token embedding ``[V, D]``."""


def save_pruned_clip(
    model: nn.Module, path: str | os.PathLike[str], used_token_ids: Iterable[int], meta: dict[str, Any]
) -> Path:
    """Save ``model``'s weights in fp16 with only the ``used_token_ids`` rows of the token embedding.

    Args:
        model: an open_clip ``CLIP`` model (needs a ``token_embedding.weight`` entry in its state dict).
        path: output file (parent folders are created).
        used_token_ids: token ids to keep (e.g. every token of the training captions, class names, templates and
            the start/end tokens); duplicates are ignored.
        meta: JSON-like metadata stored as ``ovs_meta`` (model name, ``quick_gelu``, mean/std, metrics, ...).

    Returns:
        The written path.
    """
    state = model.state_dict()
    if TOKEN_EMBEDDING_KEY not in state:
        raise ValueError(f"model has no {TOKEN_EMBEDDING_KEY!r}; save_pruned_clip expects an open_clip CLIP model")
    table = state[TOKEN_EMBEDDING_KEY]  # [V, D]
    ids = torch.tensor(sorted(set(int(i) for i in used_token_ids)), dtype=torch.int64)  # [n]
    if ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= table.shape[0]:
        raise ValueError(f"used_token_ids must be a non-empty set of ids in 0..{table.shape[0] - 1}")
    checkpoint = {
        "state_dict": {
            k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
            for k, v in state.items()
            if k != TOKEN_EMBEDDING_KEY
        },
        "pruned_token_embedding": {
            "ids": ids,
            "rows": table[ids].detach().to("cpu", torch.float16),
            "num_embeddings": int(table.shape[0]),
        },
        "ovs_meta": dict(meta),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    return out


def load_pruned_clip_state(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_pruned_clip`.

    Returns:
        The full fp32 state dict (token-embedding rows that were pruned are zero) and the ``ovs_meta`` dict.
    """
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "pruned_token_embedding" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a pruned ovs CLIP checkpoint (no 'state_dict' / 'pruned_token_embedding')")
    pruned = checkpoint["pruned_token_embedding"]
    rows = pruned["rows"].float()  # [n, D]
    table = torch.zeros(pruned["num_embeddings"], rows.shape[1])  # [V, D]
    table[pruned["ids"]] = rows
    state = {k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    state[TOKEN_EMBEDDING_KEY] = table
    return state, dict(checkpoint.get("ovs_meta", {}))

"""Batch collation (docs/architecture.md, "Dataset contract")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def list_collate(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate sample dicts into a dict of lists, one entry per sample (images may differ in size).

    Every sample of a batch must have the same keys; a method that knows its crops are fixed-size may
    ``torch.stack(batch["image"])``.
    """
    if not samples:
        raise ValueError("list_collate received an empty batch.")
    keys = list(samples[0].keys())
    for index, sample in enumerate(samples[1:], start=1):
        if set(sample) != set(keys):
            raise ValueError(f"Sample {index} has keys {sorted(sample)} but sample 0 has {sorted(keys)}.")
    return {key: [sample[key] for sample in samples] for key in keys}

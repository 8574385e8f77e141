"""Constants shared by every dataset (docs/architecture.md, "Constants")."""

from __future__ import annotations

IGNORE_INDEX: int = -1
"""Ignore label of every label tensor; datasets map their on-disk ignore value (255 or 65535) to it."""

ROOT_ENV_VAR: str = "DETECTRON2_DATASETS"
"""Environment variable naming the datasets root, as in detectron2-based projects (maskclippp.md §7.2)."""

DEFAULT_ROOT: str = "./datasets"
"""Datasets root when neither an explicit ``root`` nor ``$DETECTRON2_DATASETS`` is given."""

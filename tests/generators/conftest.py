"""Helpers for the optional detectron2 stack: its tests fail under CI (where `make test` installs it) and skip
elsewhere when it is missing."""

from __future__ import annotations

import os

import pytest


def require_detectron2() -> None:
    """Import detectron2 + Mask2Former through the compat layer; fail under ``CI=true`` if that is impossible."""
    from ovs.generators import d2compat

    try:
        d2compat.import_mask2former()
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"detectron2 / Mask2Former must be installed in CI (make install-detectron2): {error}")
        pytest.skip(f"detectron2 / Mask2Former not installed (make install-detectron2): {error}")

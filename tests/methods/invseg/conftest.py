"""InvSeg test helpers: the diffusers stack fails the tests under ``CI=true`` (where ``make test`` installs it with
``tools/install_diffusion.sh``) and skips them elsewhere; one tiny random SD model per session."""

from __future__ import annotations

import os

import pytest
import torch


def require_diffusers() -> None:
    """Import diffusers + transformers; ``pytest.fail`` under ``CI=true`` when missing, else ``pytest.skip``."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"diffusers / transformers must be installed in CI (make install-diffusion): {error}")
        pytest.skip(f"the diffusion extra is not installed ({error}); run make install-diffusion")


@pytest.fixture(scope="session")
def tiny_sd():
    """The tiny random SD-shaped model of ``ovs.methods.invseg.tiny`` (read-only: build a new one to modify it)."""
    require_diffusers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ovs.methods.invseg.tiny import build_tiny_diffusion

    return build_tiny_diffusion(seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded on the shared 2-core machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

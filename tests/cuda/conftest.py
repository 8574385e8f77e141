"""CUDA test set-up (issue 17): the ``cuda`` marker's skip / fail rule, the toy CLIP on both devices, synthetic scenes.

A ``cuda``-marked test is skipped where PyTorch sees no CUDA device, except where a GPU is expected: with
``OVS_REQUIRE_CUDA=1`` (set by ``tools/gpu_check.sh``) or under ``CI=true`` on a machine that has an NVIDIA driver
(``/dev/nvidiactl``), a missing CUDA device is a failure, never a silent skip.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ovs.backbones import CLIP, create_clip
from ovs.data.synthetic import render_split_image

REPO_ROOT = Path(__file__).resolve().parents[2]
TOY_CLIP = REPO_ROOT / "checkpoints" / "ovs_toy_clip.pt"


def cuda_expected() -> bool:
    """Whether this run must have a CUDA device (the GPU check, or CI on a machine with an NVIDIA driver)."""
    return os.environ.get("OVS_REQUIRE_CUDA") == "1" or (
        os.environ.get("CI") == "true" and Path("/dev/nvidiactl").exists()
    )


def require_cuda() -> None:
    """Skip without a CUDA device, or fail where one is expected (:func:`cuda_expected`)."""
    if torch.cuda.is_available():
        return
    message = "no CUDA device visible to PyTorch"
    if cuda_expected():
        pytest.fail(f"{message}, but a GPU is expected (OVS_REQUIRE_CUDA=1 or CI on a GPU machine): check the "
                    "driver and that the installed torch is a CUDA build (python -c 'import torch; "
                    "print(torch.version.cuda)').")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _require_cuda(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("cuda") is not None:
        require_cuda()


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """True fp32 on CUDA for the test: no TF32 in matmuls or cuDNN convolutions (the patch embedding), restored
    afterwards. PyTorch's default allows TF32 convolutions, which alone differ from CPU fp32 by about 1e-3."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def toy_clip_cpu() -> CLIP:
    """The committed toy CLIP (trained: real argmax margins, unlike random weights), fp32 on the CPU."""
    return create_clip("ovs-toy-vit", str(TOY_CLIP)).eval()


@pytest.fixture(scope="module")
def toy_clip_cuda(toy_clip_cpu: CLIP) -> CLIP:
    require_cuda()
    return copy.deepcopy(toy_clip_cpu).to("cuda")


@pytest.fixture(scope="module")
def scenes() -> list[torch.Tensor]:
    """Three synthetic validation scenes of 224 x 224, ``uint8 [3, H, W]`` (docs/synthetic.md)."""
    return [torch.from_numpy(render_split_image(0, "val", i, 224)[0].image).permute(2, 0, 1).contiguous()
            for i in range(3)]

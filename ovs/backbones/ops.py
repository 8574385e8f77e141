"""Linear layers of the dense forwards, through oneDNN for fp32 CPU inference.

PyTorch's CPU ``F.linear`` calls the BLAS (MKL in the official wheels), whose sgemm does not use its AVX-512 kernels
on every CPU; oneDNN's inner-product primitive (``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile``
uses for frozen CPU linears) does. On the 2-core AMD EPYC (Zen 4) of our CI it is 1.15-1.46x faster for the ViT-B
projection shapes (``tools/benchmark.py``; docs/performance.md). It is used only where it computes the same thing as
``F.linear``: fp32 tensors on the CPU, no autograd, no CPU autocast; everything else goes to ``F.linear``. Results
differ from the BLAS by float rounding only (relative 1e-6).

Set ``OVS_ONEDNN_LINEAR=0`` (or call :func:`use_onednn_linear(False)`) to always use ``F.linear``.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ONEDNN = {"enabled": os.environ.get("OVS_ONEDNN_LINEAR", "1") != "0"}


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN and its fused linear operator (looked up once)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn_linear(enabled: bool) -> None:
    """Route eligible linears through oneDNN (default, unless ``OVS_ONEDNN_LINEAR=0``) or always through the BLAS."""
    _ONEDNN["enabled"] = enabled


def _eligible(x: Tensor, weight: Tensor) -> bool:
    return (
        _ONEDNN["enabled"]
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and onednn_linear_available()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``[..., in] -> [..., out]``, by oneDNN when eligible (see the module doc)."""
    if _eligible(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def apply_module(module: nn.Module, x: Tensor) -> Tensor:
    """Run ``module`` on ``x`` with :func:`linear` for its ``nn.Linear`` layers: an ``nn.Linear`` itself, or an
    ``nn.Sequential`` of layers (open_clip's ``mlp``: ``c_fc``, activation, optional ``ln``, ``c_proj``)."""
    if isinstance(module, nn.Linear):
        return linear(x, module.weight, module.bias)
    if isinstance(module, nn.Sequential):
        for layer in module:
            x = apply_module(layer, x)
        return x
    return module(x)

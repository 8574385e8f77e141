"""Linear layers of the dense forwards (ovs.backbones.ops): oneDNN for fp32 CPU inference, F.linear otherwise."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ovs.backbones.ops import apply_module, linear, onednn_linear_available, use_onednn_linear

def ops_called(run: Callable[[], object]) -> set[str]:
    """Names of the operators ``run`` dispatched (PyTorch profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return {event.name for event in prof.events()}


def test_linear_matches_f_linear_through_onednn() -> None:
    assert onednn_linear_available()  # the official CPU / CUDA wheels (and the CI pins) ship oneDNN
    x = torch.randn(3, 40, 24).transpose(0, 1)  # non-contiguous [40, 3, 24]
    weight, bias = torch.randn(48, 24), torch.randn(48)
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" in ops_called(lambda: linear(x, weight, bias))
        torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_linear_falls_back_where_onednn_would_change_the_semantics() -> None:
    x, weight = torch.randn(8, 16), torch.randn(4, 16, requires_grad=True)
    out = linear(x, weight)  # autograd: F.linear
    assert out.grad_fn is not None
    out.sum().backward()
    torch.testing.assert_close(weight.grad, x.sum(0).expand(4, -1))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x, weight).dtype == torch.bfloat16  # CPU autocast still applies
        assert "mkldnn::_linear_pointwise" not in ops_called(lambda: linear(x.double(), weight.double()))
        use_onednn_linear(False)
        try:
            assert "mkldnn::_linear_pointwise" not in ops_called(lambda: linear(x, weight))
        finally:
            use_onednn_linear(True)


def test_apply_module_runs_sequential_mlps_and_other_modules() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 16))
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(apply_module(mlp, x), mlp(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(apply_module(nn.Identity(), x), x)


def test_linear_under_torch_compile_traces_f_linear() -> None:
    """Inductor cannot lower oneDNN's fused linear on non-constant weights: while compiling, ``linear`` is F.linear."""
    x, weight, bias = torch.randn(5, 16), torch.randn(8, 16), torch.randn(8)
    compiled = torch.compile(linear, backend="eager", fullgraph=True)
    with torch.no_grad():
        explained = torch._dynamo.explain(linear)(x, weight, bias)
        torch.testing.assert_close(compiled(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    traced = [str(node.target) for graph in explained.graphs for node in graph.graph.nodes]
    assert not any("_linear_pointwise" in target for target in traced)
    assert any("linear" in target for target in traced)

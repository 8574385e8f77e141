"""GEM's adaptive inverse temperature uses the *normalised* block input: β = mean_t ‖ln_1(x)_t‖₂ · d^-½
(GEM eq. 3-4 as released, training-free spec §3.2). The inputs here have x ≠ h with very different norms, so β
computed from the residual stream x instead of h = ln_1(x) fails."""

from __future__ import annotations

import torch

from ovs.backbones import AttentionInputs
from ovs.methods.training_free import GEMAttention


def inputs_with_distinct_x_and_h(seed: int = 0) -> AttentionInputs:
    g = torch.Generator().manual_seed(seed)
    x = 5.0 * torch.randn(2, 7, 12, generator=g) + 3.0  # residual stream: large norms
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    h = (x - mu) / torch.sqrt(var + 1e-5) * 0.7 + 0.1  # ln_1(x) with a non-trivial affine: ‖h‖ ≠ ‖x‖
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g) for _ in range(3))
    return AttentionInputs(x=x, h=h, q=q, k=k, v=v, scale=4**-0.5, grid=(2, 3), num_prefix=1, block=0)


def test_beta_is_the_mean_norm_of_ln1_x_times_the_head_scale() -> None:
    inputs = inputs_with_distinct_x_and_h()
    expected = torch.tensor([
        sum(float(inputs.h[b, t].square().sum().sqrt()) for t in range(7)) / 7 * 0.5 for b in range(2)
    ])
    beta = GEMAttention().beta(inputs)
    torch.testing.assert_close(beta, expected, atol=1e-5, rtol=1e-5)
    from_x = inputs.x.norm(dim=-1).mean(dim=-1) * 0.5
    assert bool(((from_x - expected).abs() > 1.0).all())  # the stream's norm is far from ln_1's


def test_gem_output_uses_the_temperature_of_h() -> None:
    """One self-self iteration per projection (eq. 5-6), then softmax(β ẑ ẑᵀ) v, mean over q, k, v (eq. 7)."""
    inputs = inputs_with_distinct_x_and_h(1)
    beta = (inputs.h.norm(dim=-1).mean(dim=-1) * inputs.scale)[:, None, None, None]  # [B, 1, 1, 1]

    def unit(z: torch.Tensor) -> torch.Tensor:
        return z / z.norm(dim=-1, keepdim=True)

    def attend(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.softmax(beta * a @ a.transpose(-1, -2), dim=-1) @ c

    outputs = []
    for z in (inputs.q, inputs.k, inputs.v):
        z = attend(unit(z), unit(z))
        outputs.append(attend(unit(z), inputs.v))
    expected = torch.stack(outputs).mean(dim=0)
    torch.testing.assert_close(GEMAttention(iterations=1)(inputs), expected, atol=1e-5, rtol=0)

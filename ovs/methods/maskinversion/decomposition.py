"""Exact gradient decomposition of the LeGrad map (paper §3.3 eq. 6; maskinversion spec §5).

The score of mask ``m`` is ``s_m = t̂_mᵀ f̂(A)`` and ``f̂`` does not depend on the token, so
``∂s_m/∂A = Σ_k t̂_{m,k} ∂f̂_k/∂A``. ``A`` enters the network only through ``O[h, i] = Σ_j A[h, i, j] V[h, j]``, hence
(factorised variant, spec §5.5)::

    ∂s_m/∂A[h, i, j] = u_m[h, i] · V[h, j],      u_m = Σ_k t̂_{m,k} U[k],      U := ∂f̂/∂O ∈ ℝ^{d × N × C}.

``U`` is computed once per image (:func:`precompute_u`); every optimisation step is then one GEMM ``T̂ U`` plus the
per-head products with ``V`` inside :class:`DecomposedColumns`, with first-order autograd only.

:func:`precompute_u` exploits the last block's structure: the pooled feature is the token mean, so the cotangent is the
same at every token and ``U_i = (B/N) [I + γ₂ W₂ diag(σ'(a_i)) W₁ J_LN₂(y_i)] γ₁ W_o`` (``B = ∂f̂/∂z̄``); with the
LayerNorm Jacobian folded into the weights this is one ``[d, 4C] x [4C, C]`` product per token instead of ``d``
backward passes through the MLP (under half the FLOPs of the batched VJP of spec §5.3). Blocks whose MLP is not
``Linear → elementwise activation → Linear`` use the batched VJP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs.backbones import CLIPViT
from ovs.backbones.ops import linear
from ovs.methods.maskinversion.legrad import (
    LastBlockState,
    activation_embedding,
    column_scores,
    finish_last_block,
)

DEFAULT_CHUNK_BYTES = 1 << 29
"""Working-memory budget of one chunk (512 MiB) for the per-mask attention gradients and the precompute."""


def _layer_scale(module: nn.Module, width: int, like: Tensor) -> Tensor:
    """The per-channel factor of an open_clip ``LayerScale`` (ones for ``nn.Identity``): ``[C]``."""
    gamma = getattr(module, "gamma", None)
    if gamma is not None:
        return gamma.to(like)
    if isinstance(module, nn.Identity):
        return torch.ones(width, dtype=like.dtype, device=like.device)
    raise NotImplementedError(f"Unsupported layer-scale module {type(module).__name__}.")


def _standard_mlp(block: nn.Module) -> tuple[nn.Linear, nn.Module, nn.Linear] | None:
    """``(c_fc, activation, c_proj)`` when the block's MLP is Linear → elementwise activation → Linear (open_clip's
    default, no ``scale_fc`` LayerNorm) and its ``ln_2`` is a LayerNorm; otherwise ``None``."""
    mlp = block.mlp
    layers = dict(mlp.named_children()) if isinstance(mlp, nn.Sequential) else {}
    ln = layers.pop("ln", nn.Identity())
    if set(layers) != {"c_fc", "gelu", "c_proj"} or not isinstance(ln, nn.Identity):
        return None
    if not isinstance(block.ln_2, nn.LayerNorm):
        return None
    return layers["c_fc"], layers["gelu"], layers["c_proj"]


def _elementwise_derivative(act: nn.Module, pre: Tensor) -> Tensor:
    """``σ'(a)`` of an elementwise activation, by autograd of ``Σ σ(a)`` (exact for GELU, QuickGELU, ...)."""
    with torch.enable_grad():
        leaf = pre.detach().requires_grad_(True)
        (deriv,) = torch.autograd.grad(act(leaf).sum(), leaf)
    return deriv


def _tokens_per_chunk(rows: int, width: int, hidden: int, budget: int) -> int:
    per_token = 4 * rows * (hidden + 2 * width)  # fp32 [R, 4C] product and two [R, C] buffers
    return max(1, budget // per_token)


@torch.no_grad()
def precompute_u_analytic(vit: CLIPViT, state: LastBlockState, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """``U = ∂f̂/∂O`` from the block's structure (module doc), stored transposed as ``[N, C, d]`` (``C`` ordered
    (head, channel)) so that ``T̂ U`` is one GEMM with a contiguous weight."""
    block = vit.blocks[vit.num_blocks - 1]
    parts = _standard_mlp(block)
    if parts is None:
        raise NotImplementedError("The last block's MLP is not Linear → activation → Linear; use the VJP route.")
    c_fc, act, c_proj = parts
    x = state.x[0]  # [N, C]
    n, width = x.shape
    heads_out = (state.attn @ state.values)[0].transpose(0, 1).reshape(n, width)  # [N, C]
    gamma1 = _layer_scale(block.ls_1, width, x)
    gamma2 = _layer_scale(block.ls_2, width, x)
    y = x + gamma1 * F.linear(heads_out, block.attn.out_proj.weight, block.attn.out_proj.bias)  # [N, C]
    ln = block.ln_2
    mean = y.mean(dim=-1, keepdim=True)
    var = y.var(dim=-1, unbiased=False, keepdim=True)
    inv_std = torch.rsqrt(var + ln.eps)  # [N, 1]
    normed = (y - mean) * inv_std  # [N, C]
    pre = F.linear(ln(y), c_fc.weight, c_fc.bias)  # [N, 4C]
    deriv = _elementwise_derivative(act, pre)  # [N, 4C]
    z = y + gamma2 * F.linear(act(pre), c_proj.weight, c_proj.bias)  # [N, C]
    pooled = z.mean(dim=0)  # [C]
    with torch.enable_grad():
        head = torch.func.jacrev(lambda v: activation_embedding(vit, v[None, None])[0])(pooled.detach())  # [d, C]
    head = head / n  # ∂f̂/∂z_i, the same for every token
    through_fc2 = (head * gamma2) @ c_proj.weight  # [d, 4C]
    ln_weight = ln.weight.to(x) if ln.weight is not None else torch.ones_like(x[0])
    w_in = gamma1[:, None] * block.attn.out_proj.weight  # [C, C]: row cotangent r at y -> (r ⊙ γ1) W_o at O
    # LN₂'s VJP (g − mean(g) − ŷ mean(g ⊙ ŷ)) / σ with g = r ⊙ γ is folded into the weights: its main term into
    # W₁ diag(γ) W_in, its two rank-one terms into per-token vectors, so each token costs one [d, 4C] x [4C, C] GEMM.
    w_main_t = ((c_fc.weight * ln_weight) @ w_in).T.contiguous()  # [C, 4C], as a linear layer's weight
    mean_dir = c_fc.weight @ ln_weight / width  # [4C]: r -> mean(r ⊙ γ) through W₁
    normed_dir = (normed * ln_weight) @ c_fc.weight.T / width  # [N, 4C]: r -> mean(r ⊙ γ ⊙ ŷ_i)
    mean_out = w_in.sum(dim=0)  # [C]: 1ᵀ W_in
    normed_out = normed @ w_in  # [N, C]: ŷ_iᵀ W_in
    mean_coef = (deriv * mean_dir) @ through_fc2.T  # [N, d]
    normed_coef = (deriv * normed_dir) @ through_fc2.T  # [N, d]
    head_out = head @ w_in  # [d, C]
    d = head.shape[0]
    u = x.new_empty(n, width, d)
    step = _tokens_per_chunk(d, width, pre.shape[1], chunk_bytes)
    for start in range(0, n, step):
        sl = slice(start, start + step)
        scaled = through_fc2[None] * deriv[sl, None, :]  # [n_c, d, 4C]
        main = linear(scaled.flatten(0, 1), w_main_t).view(scaled.shape[0], d, width)  # [n_c, d, C], oneDNN on CPU
        main -= mean_coef[sl, :, None] * mean_out + normed_coef[sl, :, None] * normed_out[sl, None, :]
        u[sl] = (main * inv_std[sl, :, None] + head_out).transpose(1, 2)  # [n_c, C, d]
    return u


def precompute_u_vjp(vit: CLIPViT, state: LastBlockState, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """``U = ∂f̂/∂O`` by batched VJPs (spec §5.3, any block structure), as ``[N, C, d]``."""
    n = state.num_tokens
    width = state.x.shape[-1]
    with torch.enable_grad():
        heads_out = (state.attn @ state.values).detach().requires_grad_(True)  # [1, H, N, c]
        f = activation_embedding(vit, finish_last_block(vit, state.x, heads_out))  # [1, d]
        d = f.shape[1]
        eye = torch.eye(d, dtype=f.dtype, device=f.device)[:, None, :]  # [d, 1, d]
        step = max(1, chunk_bytes // (4 * n * 8 * width))
        parts = []
        for start in range(0, d, step):
            (grad,) = torch.autograd.grad(
                f, heads_out, grad_outputs=eye[start:start + step], is_grads_batched=True, retain_graph=True
            )  # [r, 1, H, N, c]
            parts.append(grad[:, 0].transpose(1, 2).reshape(grad.shape[0], n, width))
    return torch.cat(parts).permute(1, 2, 0).contiguous()


def precompute_u(vit: CLIPViT, state: LastBlockState, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tensor:
    """``U = ∂f̂/∂O`` as ``[N, C, d]``: analytic for open_clip's standard block, batched VJPs otherwise."""
    if _standard_mlp(vit.blocks[vit.num_blocks - 1]) is not None:
        return precompute_u_analytic(vit, state, chunk_bytes)
    return precompute_u_vjp(vit, state, chunk_bytes)


class DecomposedColumns(torch.autograd.Function):
    """``scores[m, j] = mean_{h,i} ReLU(u[m, h, i] · V[h, j])`` with ``u_m = t̂_m U`` (spec §5.4), forward and backward
    written out so that no ``[M, H, N, N]`` gradient tensor is kept.

    Forward: ``u = T̂ U`` (one GEMM, through oneDNN on the CPU), then per chunk of masks the per-head products with
    ``V``, ReLU and the mean over heads and query rows; only the sign pattern (1 byte per element) is stored when it
    fits the budget, else the backward recomputes it. Backward: ``∂u = (active ⊙ ∂scores) V / (H N)`` per chunk and
    ``∂T̂ = ∂u Uᵀ``.
    """

    @staticmethod
    def forward(ctx: Any, tokens: Tensor, u_t: Tensor, values: Tensor, chunk: int, keep_signs: bool) -> Tensor:
        # tokens [M, d], u_t [N * C, d], values [H, N, c]
        heads, n, c = values.shape
        u = linear(tokens, u_t).view(-1, n, heads, c).transpose(1, 2)  # [M, H, N, c]
        keys = values.transpose(-1, -2)  # [H, c, N]
        out, signs = [], []
        for ui in u.split(chunk):
            grad = ui @ keys  # [m, H, N, N]
            if keep_signs:
                signs.append(grad > 0)
            out.append(grad.clamp_(min=0).sum(dim=(1, 2)))
        ctx.save_for_backward(u, u_t, values, *signs)
        ctx.chunk = chunk
        return torch.cat(out) / (heads * n)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None, None]:
        u, u_t, values, *signs = ctx.saved_tensors
        heads, n, c = values.shape
        keys = values.transpose(-1, -2)
        grads = []
        for index, (ui, gi) in enumerate(zip(u.split(ctx.chunk), grad_out.split(ctx.chunk))):
            active = signs[index] if signs else (ui @ keys) > 0  # [m, H, N, N]
            grads.append(torch.where(active, gi[:, None, None, :], 0.0) @ values)  # [m, H, N, c]
        grad_u = torch.cat(grads).transpose(1, 2).reshape(u.shape[0], n * heads * c) / (heads * n)  # [M, N * C]
        return grad_u @ u_t, None, None, None, None


class DecomposedScorer:
    """Maps normalised tokens ``[M, d]`` to LeGrad column scores ``[M, N]`` through the precomputed ``U`` (spec §5.4).

    Args:
        vit: the backbone view.
        state: the image's last-block activations.
        chunk_bytes: memory budget of one chunk of per-mask attention gradients.
    """

    retain_graph = False

    def __init__(self, vit: CLIPViT, state: LastBlockState, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.u_t = precompute_u(vit, state, chunk_bytes).flatten(0, 1)  # [N * C, d]
        self.values = state.values[0]  # [H, N, c]
        heads, n, _ = self.values.shape
        self.chunk_bytes = chunk_bytes
        self.chunk = max(1, chunk_bytes // (4 * heads * n * n))

    def __call__(self, tokens: Tensor) -> Tensor:
        heads, n, _ = self.values.shape
        keep_signs = tokens.shape[0] * heads * n * n <= 2 * self.chunk_bytes
        return DecomposedColumns.apply(tokens, self.u_t, self.values, self.chunk, keep_signs)


class NaiveScorer:
    """The reference computation (spec §1.2, §5.6): the last block repeated once per mask, ``∂s/∂A`` by autograd with
    ``create_graph=True`` each step, so the loss is differentiated through the gradient (double back-propagation).
    Blocks ``0..L-2`` are shared by all masks and run once per image without gradients."""

    retain_graph = True  # the per-mask forward graph is reused by every step

    def __init__(self, vit: CLIPViT, state: LastBlockState, num_masks: int) -> None:
        self.attn = state.attn.expand(num_masks, -1, -1, -1).detach().clone().requires_grad_(True)  # [M, H, N, N]
        out = finish_last_block(vit, state.x.expand(num_masks, -1, -1), self.attn @ state.values)
        self.features = activation_embedding(vit, out)  # [M, d], graph kept for every step

    def __call__(self, tokens: Tensor) -> Tensor:
        score = (tokens * self.features).sum()
        (grad,) = torch.autograd.grad(score, self.attn, create_graph=True)  # [M, H, N, N]
        return column_scores(grad)

"""Plain-tensor pieces of a CLIP ViT, written from the definitions (no open_clip or ovs code), shared by the tests
that recompute the backbone layer and the training-free methods step by step."""

from __future__ import annotations

import torch


def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the last axis with ``ln``'s affine parameters."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def embed(visual: torch.nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Patchify ``[B, 3, H, W]`` by the conv weights as a matrix, prepend CLS, add ``pos``, ``ln_pre``:
    ``[B, 1 + gh * gw, C]``."""
    p = visual.conv1.weight.shape[-1]
    b, _, h, w = x.shape
    gh, gw = h // p, w // p
    patches = x[:, :, : gh * p, : gw * p].reshape(b, 3, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, -1)
    tokens = patches @ visual.conv1.weight.reshape(visual.conv1.out_channels, -1).T
    tokens = torch.cat([visual.class_embedding.expand(b, 1, -1), tokens], dim=1) + pos
    return layer_norm(tokens, visual.ln_pre)

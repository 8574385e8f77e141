"""Attention capture on a diffusers ``UNet2DConditionModel`` (InvSeg spec §4).

A :class:`CaptureProcessor` replaces the processors of the self- (``attn1``) and cross-attention (``attn2``) layers at
the configured latent resolutions; every other layer keeps diffusers' SDPA processor. The probabilities
``Softmax(Q K^T / sqrt(d))`` (paper §"Attention maps", the S of eq. 2) are computed in fp32, averaged over heads and
kept in the autograd graph. A forward hook on the last block holding a needed layer stops the UNet there (the early
exit of spec §4: the res-16 layers of SD 2.1 end in ``up_blocks.1``, 0.44 of the 0.80 TFLOP forward).

diffusers is imported lazily: importing this module never needs it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


class StopForward(Exception):
    """Raised by the early-exit hook once the last needed attention layer ran."""


def processor_resolution(key: str, latent_size: int, num_levels: int) -> int:
    """Latent-grid side of the attention layer ``key`` (spec §4): ``down_blocks.i`` -> ``L / 2^i``, ``mid_block`` ->
    ``L / 2^(n-1)``, ``up_blocks.j`` -> ``L / 2^(n-1-j)`` for latent size ``L`` and ``n`` UNet levels."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"Unrecognised attention-processor key {key!r} (expected down_blocks, mid_block, up_blocks).")
    if match.group(3):
        level = num_levels - 1
    elif match.group(1) == "down_blocks":
        level = int(match.group(2))
    else:
        level = num_levels - 1 - int(match.group(2))
    return latent_size // 2**level


def _block_name(key: str) -> str:
    match = _KEY.match(key)
    assert match is not None
    return "mid_block" if match.group(3) else f"{match.group(1)}.{match.group(2)}"


@dataclass
class CapturedAttention:
    """Head- and layer-averaged attention per resolution, fp32, in the autograd graph.

    Attributes:
        self_maps: ``{r: [B, r*r, r*r]}`` row-stochastic self-attention.
        cross_maps: ``{r: [B, r*r, K]}`` pixel-to-token cross-attention (K = text tokens, 77 for SD).
    """

    self_maps: dict[int, Tensor]
    cross_maps: dict[int, Tensor]


class CaptureProcessor:
    """diffusers attention processor that records head-averaged fp32 attention probabilities (spec §4).

    Mirrors ``diffusers.models.attention_processor.AttnProcessor`` (the explicit-softmax path) so the layer output
    equals the default processor's; the probabilities are appended to ``store[(resolution, kind)]``.
    """

    def __init__(self, store: dict[tuple[int, str], list[Tensor]], resolution: int) -> None:
        self.store = store
        self.resolution = resolution

    def __call__(self, attn: Any, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: Any,
                 **kwargs: Any) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, n_query, _ = hidden_states.shape
        kind = "self" if encoder_hidden_states is None else "cross"
        if n_query != self.resolution**2:
            raise RuntimeError(
                f"CaptureProcessor expected {self.resolution}x{self.resolution} = {self.resolution**2} queries, got "
                f"{n_query}: the image size does not give the latent size the resolutions were computed for."
            )
        n_key = n_query if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, n_key, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))  # [B*h, n, d]
        with torch.autocast(query.device.type, enabled=False):
            scores = torch.bmm(query.float(), key.float().transpose(1, 2)) * attn.scale  # [B*h, n_q, n_k]
            if attention_mask is not None:
                scores = scores + attention_mask.float()
            probs = scores.softmax(dim=-1)
        self.store[(self.resolution, kind)].append(probs.view(batch, attn.heads, n_query, -1).mean(dim=1))
        hidden_states = torch.bmm(probs.to(value.dtype), value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionCapture:
    """Installs :class:`CaptureProcessor` on the layers of ``resolutions`` and runs the UNet up to the last of them.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (its processors are replaced in place).
        latent_size: side of the latent grid the UNet will see (64 for SD 2.1-base at 512 px).
        resolutions: latent-grid sides whose attention is captured (``(16,)``: paper Table 5).
        early_exit: stop the forward after the last captured block.
    """

    def __init__(self, unet: nn.Module, latent_size: int, resolutions: Sequence[int] = (16,),
                 early_exit: bool = True) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet = unet
        self.latent_size = latent_size
        self.resolutions = tuple(sorted({int(r) for r in resolutions}))
        num_levels = len(unet.config.block_out_channels)
        self.store: dict[tuple[int, str], list[Tensor]] = defaultdict(list)
        keys = list(unet.attn_processors)
        self.key_resolution = {k: processor_resolution(k, latent_size, num_levels) for k in keys}
        available = sorted(set(self.key_resolution.values()), reverse=True)
        missing = [r for r in self.resolutions if r not in available]
        if missing:
            raise ValueError(
                f"The UNet has no attention at latent resolution(s) {missing} for a {latent_size}x{latent_size} "
                f"latent; it has {available}. Set attention_resolutions to some of these (or change image_size)."
            )
        self.captured_keys = [k for k in keys if self.key_resolution[k] in self.resolutions]
        unet.set_attn_processor({
            k: CaptureProcessor(self.store, self.key_resolution[k]) if k in self.captured_keys else AttnProcessor2_0()
            for k in keys
        })
        self._hook = None
        if early_exit:
            order = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))] + ["mid_block"]
            order += [f"up_blocks.{j}" for j in range(len(unet.up_blocks))]
            last = max((_block_name(k) for k in self.captured_keys), key=order.index)
            self._hook = unet.get_submodule(last).register_forward_hook(self._stop)

    @staticmethod
    def _stop(*_: Any) -> None:
        raise StopForward

    def __call__(self, latents: Tensor, timesteps: Tensor, text_embeddings: Tensor) -> CapturedAttention:
        """Run the UNet on ``latents [B, 4, L, L]`` at ``timesteps [B]`` with ``text_embeddings [B, K, D]``."""
        if latents.shape[-1] != self.latent_size or latents.shape[-2] != self.latent_size:
            raise ValueError(f"Expected {self.latent_size}x{self.latent_size} latents, got {tuple(latents.shape)}.")
        self.store.clear()
        try:
            self.unet(latents, timesteps, encoder_hidden_states=text_embeddings, return_dict=False)
        except StopForward:
            pass
        result = CapturedAttention({}, {})
        for (resolution, kind), maps in self.store.items():
            target = result.self_maps if kind == "self" else result.cross_maps
            target[resolution] = torch.stack(maps).mean(dim=0)  # mean over the layers of this resolution
        self.store.clear()
        return result

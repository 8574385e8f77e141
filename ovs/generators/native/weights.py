"""Released Mask2Former weights -> the native model (maskclippp.md §8.2 step 3: the generator checkpoint).

detectron2 checkpoints (``model_final_*.pkl``: a pickled ``{"model": {name: numpy array}}``; ``.pth``: a state dict,
possibly under ``"model"``) are read without running code from the file (``.pkl``: a restricted unpickler that only
rebuilds dicts, lists, tuples, numpy arrays / scalars, numbers and strings; ``.pth``:
``torch.load(weights_only=True)``) and renamed through the explicit rules of :data:`KEY_RULES`. Every checkpoint tensor
must land on a model tensor of the same shape and every model tensor must be filled, else one error names the file and
the first unmatched keys. The Swin backbones keep maskformer2's module names (identity rules); the buffers a Swin
checkpoint may carry that follow from the window size (:data:`DERIVED_BUFFERS`) are dropped and recomputed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ovs.generators.pickled import read_weights_file

IGNORED_PREFIXES = ("criterion.", "pixel_mean", "pixel_std")
"""Training-only buffers (``criterion.empty_weight``) and the normalisation, which comes from the config."""

DERIVED_BUFFERS = re.compile(r"backbone\.layers\.\d+\.blocks\.\d+\.(attn\.relative_position_index|attn_mask)")
"""Swin buffers that maskformer2's ``state_dict()`` carries (``relative_position_index``; other Swin ports also store
``attn_mask``) but that are functions of the window size and input size: the native model recomputes them (the
shape of ``relative_position_bias_table`` pins the window)."""

_D2_HEAD = "sem_seg_head."


def _rules(fpn_levels: int) -> list[tuple[str, str | Callable[[re.Match[str]], str]]]:
    """``(detectron2 regex, native replacement)`` pairs, tried in order; the first full match wins."""

    def lateral(native: str) -> Callable[[re.Match[str]], str]:
        def rename(match: re.Match[str]) -> str:
            index = fpn_levels - int(match.group(1))  # adapter_1 is the finest level; native lists are coarse->fine
            part = "0.weight" if match.group(2) == "weight" else f"1.{match.group(3)}"
            return f"pixel_decoder.{native}.{index}.{part}"

        return rename

    return [
        (r"backbone\.stem\.conv1\.weight", "backbone.conv1.weight"),
        (r"backbone\.stem\.conv1\.norm\.(\w+)", r"backbone.bn1.\1"),
        (r"backbone\.res([2-5])\.(\d+)\.conv([1-3])\.weight",
         lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.conv{m.group(3)}.weight"),
        (r"backbone\.res([2-5])\.(\d+)\.conv([1-3])\.norm\.(\w+)",
         lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.bn{m.group(3)}.{m.group(4)}"),
        (r"backbone\.res([2-5])\.(\d+)\.shortcut\.weight",
         lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.0.weight"),
        (r"backbone\.res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)",
         lambda m: f"backbone.layer{int(m.group(1)) - 1}.{m.group(2)}.downsample.1.{m.group(3)}"),
        # Swin (maskformer2 D2SwinTransformer): the native modules keep the reference names (native/swin.py)
        (r"backbone\.patch_embed\.(proj|norm)\.(weight|bias)", r"backbone.patch_embed.\1.\2"),
        (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(norm[12]|attn\.qkv|attn\.proj|mlp\.fc[12])\.(weight|bias)",
         r"backbone.layers.\1.blocks.\2.\3.\4"),
        (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
         r"backbone.layers.\1.blocks.\2.attn.relative_position_bias_table"),
        (r"backbone\.layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
         r"backbone.layers.\1.downsample.\2"),
        (r"backbone\.norm([0-3])\.(weight|bias)", r"backbone.norm\1.\2"),
        (r"sem_seg_head\.pixel_decoder\.input_proj\.(\d+)\.([01])\.(weight|bias)", r"pixel_decoder.input_proj.\1.\2.\3"),
        (r"sem_seg_head\.pixel_decoder\.transformer\.level_embed", "pixel_decoder.level_embed"),
        (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.(.+)", r"pixel_decoder.layers.\1.\2"),
        (r"sem_seg_head\.pixel_decoder\.mask_features\.(weight|bias)", r"pixel_decoder.mask_features.\1"),
        (r"sem_seg_head\.pixel_decoder\.adapter_(\d+)\.(weight|norm\.(weight|bias))", lateral("lateral_convs")),
        (r"sem_seg_head\.pixel_decoder\.layer_(\d+)\.(weight|norm\.(weight|bias))", lateral("output_convs")),
        (r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)",
         r"decoder.cross_attention.\1.attn.\2"),
        (r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)",
         r"decoder.cross_attention.\1.norm.\2"),
        (r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.(.+)",
         r"decoder.self_attention.\1.attn.\2"),
        (r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)",
         r"decoder.self_attention.\1.norm.\2"),
        (r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.(.+)", r"decoder.ffn.\1.\2"),
        (r"sem_seg_head\.predictor\.static_query\.weight", "decoder.query_feat.weight"),  # weights before version 2
        (r"sem_seg_head\.predictor\.(decoder_norm|query_feat|query_embed|level_embed|class_embed|mask_embed|input_proj)"
         r"\.(.+)", r"decoder.\1.\2"),
    ]


def detectron2_to_native(state: dict[str, Any], fpn_levels: int = 1) -> tuple[dict[str, Any], list[str]]:
    """Rename a detectron2 Mask2Former state dict; returns ``(renamed, keys no rule matched)``."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in _rules(fpn_levels)]
    renamed: dict[str, Any] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES) or DERIVED_BUFFERS.fullmatch(key):
            continue
        for pattern, replacement in rules:
            match = pattern.fullmatch(key)
            if match is not None:
                renamed[match.expand(replacement) if isinstance(replacement, str) else replacement(match)] = value
                break
        else:
            unmatched.append(key)
    return renamed, unmatched


MISSING_HINT = ("Download the released Mask2Former model_final_*.pkl (docs/maskclippp.md, 'Mask generators') and pass "
                "it as `weights`.")


def read_checkpoint(path: str | Path, missing_hint: str = MISSING_HINT) -> dict[str, Tensor]:
    """The model state dict (under ``"model"`` or at the top level) of a ``.pkl`` / ``.pth`` checkpoint as tensors;
    ``missing_hint`` is the fix a missing file's error gives."""
    data = read_weights_file(path, missing_hint)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(data).__name__}).")
    return {key: torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
            for key, value in data.items()}


def load_mask2former_weights(model: nn.Module, path: str | Path, fpn_levels: int = 1) -> None:
    """Fill ``model`` (a :class:`~ovs.generators.native.mask2former.Mask2Former`) from a checkpoint in detectron2
    naming (``sem_seg_head.*``) or in native naming (a ``state_dict()`` of this model)."""
    state = read_checkpoint(path)
    unmatched: list[str] = []
    if any(key.startswith(_D2_HEAD) for key in state):
        state, unmatched = detectron2_to_native(state, fpn_levels)
    expected = model.state_dict()
    check_fit(path, "native Mask2Former", state, expected, unmatched, allow_missing=False,
              fix="Set backbone (R50 / swin_t / swin_l) and num_classes / num_queries / dec_layers (DEC_LAYERS - 1) "
                  "to the checkpoint's config.")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in state.items()})


def check_fit(path: str | Path, what: str, state: dict[str, Tensor], expected: dict[str, Tensor],
              unmatched: list[str], allow_missing: bool, fix: str) -> None:
    """Raise one ``ValueError`` naming ``path``, the first checkpoint keys without a model tensor (``unmatched`` and
    the renamed keys ``expected`` lacks), the first model tensors left unfilled (unless ``allow_missing``) and the
    first shape mismatches, then ``fix``."""
    unmatched = unmatched + [key for key in state if key not in expected]
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
                  for key in state if key in expected and state[key].shape != expected[key].shape]
    missing = [] if allow_missing else [key for key in expected if key not in state]
    if unmatched or mismatched or missing:
        raise ValueError(
            f"{path} does not fit the {what}: {len(unmatched)} unmatched checkpoint keys {unmatched[:5]}, "
            f"{len(missing)} missing model keys {missing[:5]}, {len(mismatched)} shape mismatches {mismatched[:3]}. "
            f"{fix}"
        )

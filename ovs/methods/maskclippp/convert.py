"""Convert the authors' released MaskCLIP++ checkpoints (``HVision-NKU/MaskCLIPpp``, detectron2 ``.pth``) into ovs
state dicts (maskclippp.md §2.3 "Checkpoints contain only visual_encoder.*, psm.*, criterion.*, text_encoder.*").

Key layout of the authors' files and what ovs calls it:

* ``visual_encoder.proxy.*`` (the open_clip visual tower: ConvNeXt, ViT, ModifiedResNet) -> ``clip.model.visual.*``;
  for EVA towers the proxy is an ``eva_clip`` vision transformer, converted to open_clip's timm EVA trunk
  (``clip.model.visual.trunk.*``) with timm's own EVA checkpoint filter;
* ``visual_encoder.mask_logit_scale``: log α, ``[n_neck_layers, heads]`` for ViT / EVA stored **last block first**
  (the reference indexes it by ``num_blocks - block``), ``[heads]`` for ResNet -> ``encoder.mask_logit_scale``,
  front to back;
* ``psm.corr_proj_in.0`` / ``psm.corr_proj_out.0`` (LinearPSM) -> ``psm.expand`` / ``psm.reduce``;
  ``psm.img2text`` / ``psm.ln_1`` / ``psm.img_proj`` (PseudoTextPSM) -> ``psm.attention`` / ``psm.norm`` /
  ``psm.img_proj``;
* ``text_encoder.proxy.*`` ("wtext") -> the text tower (``clip.model.text.*`` for open_clip's custom-text models,
  else the top-level ``clip.model.*`` text parameters); ``text_encoder.logit_scale`` and ``criterion.*`` are dropped
  (the logit scale is a frozen constant, spec Q4; the loss has no parameters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from ovs.methods.maskclippp.module import MaskCLIPPP

PSM_RENAMES = (
    ("psm.corr_proj_in.0.", "psm.expand."),
    ("psm.corr_proj_out.0.", "psm.reduce."),
    ("psm.img2text.", "psm.attention."),
    ("psm.ln_1.", "psm.norm."),
    ("psm.img_proj.", "psm.img_proj."),
)
DROPPED_PREFIXES = ("criterion.", "text_encoder.logit_scale")


class ConversionError(ValueError):
    """The source checkpoint does not fit the target configuration."""


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def convert_visual(proxy: dict[str, Tensor], visual: nn.Module, is_eva: bool) -> dict[str, Tensor]:
    """``visual_encoder.proxy.*`` (prefix removed) -> ``clip.model.visual.*``."""
    if not is_eva:
        return {f"clip.model.visual.{k}": v for k, v in proxy.items()}
    from timm.models.eva import checkpoint_filter_fn

    trunk = visual.trunk  # type: ignore[attr-defined]
    converted = checkpoint_filter_fn(proxy, trunk)
    return {f"clip.model.visual.trunk.{k}": v for k, v in converted.items()}


def convert_state_dict(source: Mapping[str, Tensor], model: MaskCLIPPP) -> dict[str, Tensor]:
    """Authors' ``model`` state dict -> ovs MaskCLIP++ state-dict entries (module docstring), checked against
    ``model`` (an ovs MaskCLIP++ of the same configuration; its values are not used).

    Raises:
        ConversionError: source keys without an ovs counterpart, converted keys the model lacks, shape mismatches,
            or trained tensors (``model.trained_state_keys()``) the source does not provide.
    """
    target = model.state_dict()
    text_prefix = "clip.model.text." if any(k.startswith("clip.model.text.") for k in target) else "clip.model."
    out: dict[str, Tensor] = {}
    proxy = _strip(source, "visual_encoder.proxy.")
    if proxy:
        out.update(convert_visual(proxy, model.clip.model.visual, model.architecture == "eva"))
    scale = source.get("visual_encoder.mask_logit_scale")
    if scale is not None:
        out["encoder.mask_logit_scale"] = scale.flip(0) if scale.ndim == 2 else scale
    for key, value in source.items():
        for old, new in PSM_RENAMES:
            if key.startswith(old):
                out[new + key[len(old):]] = value
    out.update({text_prefix + k: v for k, v in _strip(source, "text_encoder.proxy.").items()})
    known = ("visual_encoder.proxy.", "visual_encoder.mask_logit_scale", "text_encoder.proxy.",
             *(old for old, _ in PSM_RENAMES), *DROPPED_PREFIXES)
    unknown = sorted(k for k in source if not k.startswith(known))
    if unknown:
        raise ConversionError(f"{len(unknown)} source tensors have no ovs counterpart (e.g. {unknown[:3]}); is this a "
                              "MaskCLIP++ checkpoint?")
    absent = sorted(k for k in out if k not in target)
    if absent:
        raise ConversionError(f"{len(absent)} converted tensors do not exist in the ovs model (e.g. {absent[:3]}): "
                              "the config's architecture or PSM differs from the checkpoint's.")
    wrong = sorted(k for k, v in out.items() if tuple(v.shape) != tuple(target[k].shape))
    if wrong:
        k = wrong[0]
        raise ConversionError(f"{len(wrong)} tensors differ in shape, e.g. {k}: {tuple(out[k].shape)} in the source, "
                              f"{tuple(target[k].shape)} in the config's model.")
    missing = sorted(set(model.trained_state_keys()) - set(out))
    if missing:
        raise ConversionError(f"The source lacks {len(missing)} trained tensors (e.g. {missing[:3]}).")
    return {k: v.detach().clone() for k, v in out.items()}

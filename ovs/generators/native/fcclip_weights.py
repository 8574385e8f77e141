"""Released FC-CLIP / MAFT+ checkpoints -> :class:`~ovs.generators.native.fcclip.NativeFCCLIP` (maskclippp.md §8.2
step 3, §8.6).

``fcclip_coco-pan_*.pth`` and ``maftp_*.pth`` are detectron2 state dicts (possibly under ``"model"``) of the whole
FC-CLIP / MAFT+ meta-architecture, read with ``torch.load(weights_only=True)`` (``.pkl``: the restricted unpickler of
:mod:`ovs.generators.pickled`). As MaskCLIP++'s ``FCCLIPSegmentor``, only the head is taken from them:

* ``sem_seg_head.*``: the Mask2Former part through :func:`~ovs.generators.native.weights.detectron2_to_native`; the
  FC-CLIP-specific tensors through :data:`FCCLIP_RULES` (``class_embed`` MLP, ``logit_scale``,
  ``_mask_pooling_proj``) and the meta-architecture's ``void_embedding.weight``;
* ``backbone.clip_model.*`` (the open_clip CLIP): loaded into the generator CLIP for MAFT+ (visual and text towers,
  the reference's ``LOAD_BEG_KEY`` ``backbone.clip_model.visual.`` / ``backbone.clip_model.``), ignored for FC-CLIP,
  whose CLIP is the frozen open_clip release;
* :data:`DROPPED_PREFIXES`: tensors the reference never loads (MAFT+'s content-dependent transfer and its frozen
  teacher CLIP, the loss buffer).

Anything else, a shape mismatch or an unfilled head tensor fails with one error naming the file and the first keys.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from torch import Tensor, nn

from ovs.generators.native.weights import check_fit, detectron2_to_native, read_checkpoint

logger = logging.getLogger(__name__)

CLIP_PREFIX = "backbone.clip_model."
"""The open_clip CLIP of FC-CLIP's / MAFT+'s ``CLIP`` backbone (``backbone.clip_model.visual.*`` and the text tower)."""

DROPPED_PREFIXES: dict[str, str] = {
    "cdt.": "MAFT+ content-dependent transfer (training-time text adaptation; not in MaskCLIP++'s generator)",
    "backbone_t.": "MAFT+ frozen teacher CLIP of its representation-compensation loss (training only)",
    "criterion.": "loss buffers (empty_weight)",
    "pixel_mean": "normalisation buffer (given by the config)",
    "pixel_std": "normalisation buffer (given by the config)",
}
"""Checkpoint tensors that are dropped on purpose, with the reason (spec §8.2 step 3)."""

_HEAD = "sem_seg_head."
FCCLIP_RULES: list[tuple[str, str]] = [
    (r"sem_seg_head\.predictor\.class_embed\.layers\.(\d+)\.(weight|bias)",
     r"decoder.class_embed.class_embed.layers.\1.\2"),
    (r"sem_seg_head\.predictor\.logit_scale", "decoder.class_embed.logit_scale"),
    (r"sem_seg_head\.predictor\._mask_pooling_proj\.([01])\.(weight|bias)", r"decoder.mask_pooling_proj.\1.\2"),
    (r"void_embedding\.weight", "decoder.class_embed.void_embedding.weight"),
]
"""``(FC-CLIP regex, native replacement)`` for the tensors Mask2Former does not have; tried before the common rules."""

MISSING_HINT = ("Download the generator weights listed in docs/maskclippp.md ('Native FC-CLIP / MAFT+ generators': "
                "FC-CLIP fcclip_coco-pan_*.pth, MAFT+ maftp_*.pth) into checkpoints/generators/ and pass the file as "
                "`weights`.")


def _fcclip_name(key: str) -> str | None:
    """Native name of a FC-CLIP-specific tensor (:data:`FCCLIP_RULES`), ``None`` for any other key."""
    for pattern, replacement in FCCLIP_RULES:
        match = re.fullmatch(pattern, key)
        if match is not None:
            return match.expand(replacement)
    return None


def split_fcclip_state(state: dict[str, Tensor], fpn_levels: int = 1
                       ) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str], list[str]]:
    """Sort a FC-CLIP / MAFT+ state dict: ``(head tensors in native naming, CLIP tensors in open_clip naming,
    dropped keys, unmatched keys)``."""
    head: dict[str, Tensor] = {}
    clip: dict[str, Tensor] = {}
    common: dict[str, Tensor] = {}
    dropped: list[str] = []
    unmatched: list[str] = []
    for key, value in state.items():
        native = _fcclip_name(key)
        if native is not None:
            head[native] = value
        elif key.startswith(CLIP_PREFIX):
            clip[key[len(CLIP_PREFIX):]] = value
        elif key.startswith(tuple(DROPPED_PREFIXES)):
            dropped.append(key)
        elif key.startswith(_HEAD):
            common[key] = value
        else:
            unmatched.append(key)
    renamed, rest = detectron2_to_native(common, fpn_levels)
    head.update(renamed)
    return head, clip, dropped, unmatched + rest


FIT_HINT = "Set clip_model / num_queries / dec_layers to the checkpoint's config (FC-CLIP 250 queries, MAFT+ 100)."


def load_fcclip_weights(head: nn.Module, clip_model: nn.Module, path: Path, clip_from_checkpoint: bool,
                        clip_has_pretrained: bool) -> None:
    """Fill ``head`` (:class:`~ovs.generators.native.fcclip.FCCLIPHead`) and, with ``clip_from_checkpoint``, the
    open_clip ``clip_model`` from a FC-CLIP / MAFT+ checkpoint.

    CLIP tensors the checkpoint lacks keep their ``clip_pretrained`` values (the reference loads with
    ``strict=False`` over the open_clip release) and are logged; without pretrained weights they are an error.
    """
    state = read_checkpoint(path, MISSING_HINT)
    head_state, clip_state, dropped, unmatched = split_fcclip_state(state, head.fpn_levels)  # type: ignore[arg-type]
    check_fit(path, "FC-CLIP head (sem_seg_head.*, void_embedding.weight)", head_state, head.state_dict(), unmatched,
              allow_missing=False, fix=FIT_HINT)
    if clip_from_checkpoint:
        if not clip_state:
            raise ValueError(f"{path} has no {CLIP_PREFIX}* tensors; clip_from_checkpoint=True needs a MAFT+ "
                             "checkpoint (set it to false for FC-CLIP's head-only files).")
        expected = clip_model.state_dict()
        check_fit(path, f"generator CLIP ({CLIP_PREFIX}*)", clip_state, expected, [],
                  allow_missing=clip_has_pretrained, fix=FIT_HINT)
        kept = [key for key in expected if key not in clip_state]
        if kept:
            logger.warning("%s lacks %d generator-CLIP tensors (e.g. %s); they keep the clip_pretrained weights.",
                           path, len(kept), kept[:3])
        clip_model.load_state_dict({k: v.to(expected[k].dtype) for k, v in clip_state.items()}, strict=False)
    elif clip_state:
        dropped += [CLIP_PREFIX + key for key in clip_state]
    if dropped:
        logger.info("%s: %d tensors not used by the generator (e.g. %s).", path, len(dropped), dropped[:3])
    expected = head.state_dict()
    head.load_state_dict({key: value.to(expected[key].dtype) for key, value in head_state.items()})

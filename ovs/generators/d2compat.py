"""Run detectron2 v0.6 and Mask2Former on a CPU machine with current numpy / Pillow (maskclippp.md §13).

The registry's ``pb1-detectron2==0.6`` (installed by ``tools/install_detectron2.sh``) is pure Python: it has no
compiled ``detectron2._C``. This module, imported before detectron2, provides what it needs at run time:

* a stub ``detectron2._C`` whose attributes raise a clear error (only the compiled box ops — NMS, ROIAlign,
  deformable convolution — use it; Mask2Former-style models never call them);
* the numpy aliases removed in numpy 1.24 (``np.bool``, ``np.int``, ``np.float``, ``np.complex``, ``np.object``,
  ``np.str``) and ``PIL.Image.LINEAR`` removed in Pillow 10;
* for Mask2Former (``maskformer2==0.1``): a ``SetCriterion`` that accepts the ``weight_dict`` its own
  ``MaskFormer.from_config`` passes (the packaged ``__init__`` takes the three weights instead). Its deformable
  attention already falls back to the pure-PyTorch ``grid_sample`` path when the CUDA op is absent (spec Q11).

``import ovs`` never imports this module's targets; only :mod:`ovs.generators.detectron2` calls it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

INSTALL_HINT = (
    "Install it into this environment with `make install-detectron2` (or `bash tools/install_detectron2.sh "
    "PATH/TO/python`); on a GPU machine prefer the upstream source install "
    "`pip install 'git+https://github.com/facebookresearch/detectron2.git'` (docs/maskclippp.md)."
)

_NUMPY_ALIASES = {"bool": bool, "int": int, "float": float, "complex": complex, "object": object, "str": str}


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for the compiled ``detectron2._C``: any attribute access raises with the reason."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2._C.{name} is a compiled detectron2 op, absent from the pure-Python CPU install. Models that "
            "need it (NMS / ROIAlign / deformable convolution) require the upstream source install of detectron2."
        )


def install_shims() -> None:
    """Add the numpy / Pillow aliases and the ``detectron2._C`` stub (idempotent)."""
    import numpy as np
    from PIL import Image

    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    if "detectron2._C" not in sys.modules:
        try:
            importlib.import_module("detectron2._C")
        except ImportError:
            sys.modules["detectron2._C"] = _MissingCompiledOps("detectron2._C")


def import_detectron2() -> types.ModuleType:
    """``import detectron2`` after :func:`install_shims`; a missing install raises ``ImportError`` with the fix."""
    install_shims()
    try:
        import detectron2
        import detectron2.modeling  # noqa: F401  (registers the meta-architectures and backbones)
    except ImportError as error:
        raise ImportError(f"detectron2 is not installed ({error}). {INSTALL_HINT}") from error
    return detectron2


def import_mask2former() -> types.ModuleType:
    """``import mask2former`` (registers ``MaskFormer``, the Mask2Former heads and ``D2SwinTransformer``) and patch
    its ``SetCriterion`` to accept ``weight_dict``."""
    import_detectron2()
    try:
        import mask2former
        import mask2former.maskformer_model as maskformer_model
    except ImportError as error:
        raise ImportError(f"Mask2Former (maskformer2) is not installed ({error}). {INSTALL_HINT}") from error
    original = maskformer_model.SetCriterion
    if not getattr(original, "_ovs_weight_dict_adapter", False):
        maskformer_model.SetCriterion = _weight_dict_criterion(original)
    return mask2former


def _weight_dict_criterion(base: type) -> type:
    """Subclass of the packaged ``SetCriterion`` taking ``weight_dict`` (``loss_ce`` / ``loss_mask`` / ``loss_dice``
    plus ``_<i>`` auxiliary copies) as ``MaskFormer.from_config`` passes it."""

    class SetCriterion(base):  # type: ignore[misc, valid-type]
        _ovs_weight_dict_adapter = True

        def __init__(self, num_classes: int, matcher: Any, weight_dict: dict[str, float], **kwargs: Any) -> None:
            auxiliary = sum(1 for key in weight_dict if key.startswith("loss_ce_"))
            super().__init__(
                num_classes,
                matcher,
                class_weight=weight_dict["loss_ce"],
                mask_weight=weight_dict["loss_mask"],
                dice_weight=weight_dict["loss_dice"],
                num_layers=auxiliary,
                **kwargs,
            )
            self.weight_dict = dict(weight_dict)

    return SetCriterion

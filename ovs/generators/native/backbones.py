"""Backbones of the native Mask2Former by name (maskclippp.md §8.6 "generator backbone"; open_clip-style factory:
names as data).

A backbone maps normalised, padded images ``[B, 3, H, W]`` to named feature maps and declares them through
``out_channels`` and ``out_strides`` (``{name: int}``, finest first), which size the pixel decoder. The released
detectron2 weights of each backbone load through its own rules in :mod:`ovs.generators.native.weights`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ovs.generators.native.resnet import ResNet50Backbone
from ovs.generators.native.swin import swin_l, swin_t
from ovs.generators.native.tiny_resnet import TinyResNetBackbone

BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "R50": ResNet50Backbone,
    "swin_t": swin_t,
    "swin_l": swin_l,
    "resnet_tiny": TinyResNetBackbone,
}


def build_backbone(name: str) -> nn.Module:
    """The backbone called ``name`` (one of :data:`BACKBONES`), randomly initialised."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown generator backbone {name!r}; choose one of {sorted(BACKBONES)}.")
    return BACKBONES[name]()

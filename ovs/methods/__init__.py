"""LightningModules of the methods: the eval-only dense base class, the training-free methods and MaskCLIP++."""

from ovs.methods.api import SegmentationResult, create_segmenter, segment
from ovs.methods.base import DenseSegmenter, Vocabulary
from ovs.methods.maskclippp import MaskCLIPPP
from ovs.methods.training_free import (
    GEM,
    METHODS,
    NACLIP,
    SCLIP,
    ClearCLIP,
    CLIPSurgery,
    MaskCLIP,
    VanillaCLIP,
)

__all__ = [
    "CLIPSurgery",
    "ClearCLIP",
    "DenseSegmenter",
    "GEM",
    "METHODS",
    "MaskCLIP",
    "MaskCLIPPP",
    "NACLIP",
    "SCLIP",
    "SegmentationResult",
    "VanillaCLIP",
    "Vocabulary",
    "create_segmenter",
    "segment",
]

"""LightningModules of the methods: the eval-only dense base class and the training-free methods."""

from ovs.methods.api import SegmentationResult, create_segmenter, segment
from ovs.methods.base import DenseSegmenter, Vocabulary
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
    "NACLIP",
    "SCLIP",
    "SegmentationResult",
    "VanillaCLIP",
    "Vocabulary",
    "create_segmenter",
    "segment",
]

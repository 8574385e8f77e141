"""Mask generators in plain PyTorch (issue 13; maskclippp.md §8): no detectron2 needed, released weights load
through an explicit key map."""

from ovs.generators.native.class_head import OpenVocabClassHead
from ovs.generators.native.fcclip import FCCLIPHead, NativeFCCLIP
from ovs.generators.native.fcclip_weights import load_fcclip_weights
from ovs.generators.native.criterion import HungarianMatcher, Mask2FormerCriterion
from ovs.generators.native.mask2former import Mask2Former, NativeMask2Former
from ovs.generators.native.module import Mask2FormerModule
from ovs.generators.native.deform_attn import MSDeformAttn, ms_deform_attn
from ovs.generators.native.weights import detectron2_to_native, load_mask2former_weights, read_checkpoint

__all__ = [
    "FCCLIPHead",
    "HungarianMatcher",
    "MSDeformAttn",
    "Mask2Former",
    "Mask2FormerCriterion",
    "Mask2FormerModule",
    "NativeFCCLIP",
    "NativeMask2Former",
    "OpenVocabClassHead",
    "detectron2_to_native",
    "load_fcclip_weights",
    "load_mask2former_weights",
    "ms_deform_attn",
    "read_checkpoint",
]

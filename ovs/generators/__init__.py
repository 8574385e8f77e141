"""Mask generators for MaskCLIP++ inference (maskclippp.md §8): the :class:`MaskGenerator` interface, the
ground-truth oracle, masks read from disk and a detectron2 adapter (Mask2Former, FC-CLIP, MAFT+).

Nothing here imports detectron2 at import time; :class:`Detectron2Generator` imports it (through
:mod:`ovs.generators.d2compat`) when it is built.
"""

from ovs.generators.base import MaskGenerator, MaskProposals, original_sizes, resize_masks
from ovs.generators.detectron2_adapter import Detectron2Generator
from ovs.generators.oracle import GroundTruthMasks
from ovs.generators.precomputed import PrecomputedMasks, read_npz, write_coco_rle_json, write_npz

__all__ = [
    "Detectron2Generator",
    "GroundTruthMasks",
    "MaskGenerator",
    "MaskProposals",
    "PrecomputedMasks",
    "original_sizes",
    "read_npz",
    "resize_masks",
    "write_coco_rle_json",
    "write_npz",
]

"""Synthetic open-vocabulary benchmark: procedural scenes in the real COCO layouts, and the toy-CLIP helpers.

See docs/synthetic.md: 36 colour–shape thing classes (9 unseen in ``train``), 8 textured stuff classes, panoptic /
semantic / instance / caption annotations, a ``pretrain`` split for the toy CLIP, and the pruned checkpoint format.
"""

from ovs.data.synthetic.checkpoint import load_pruned_clip_state, save_pruned_clip
from ovs.data.synthetic.classes import (
    CLASS_FILE,
    CLASS_NAMES,
    CLASSES,
    IS_THING,
    NUM_CLASSES,
    NUM_STUFF,
    NUM_THINGS,
    SEEN_CLASS_FILE,
    SEEN_CLASSES,
    UNSEEN_CLASSES,
    UNSEEN_THINGS,
    seen_mask,
)
from ovs.data.synthetic.datamodule import SyntheticDataModule, SyntheticPanoptic, SyntheticSemantic
from ovs.data.synthetic.generate import DEFAULT_ROOT, generate_benchmark, generate_split, render_split_image

__all__ = [
    "CLASSES",
    "CLASS_FILE",
    "CLASS_NAMES",
    "DEFAULT_ROOT",
    "IS_THING",
    "NUM_CLASSES",
    "NUM_STUFF",
    "NUM_THINGS",
    "SEEN_CLASSES",
    "SEEN_CLASS_FILE",
    "UNSEEN_CLASSES",
    "UNSEEN_THINGS",
    "SyntheticDataModule",
    "SyntheticPanoptic",
    "SyntheticSemantic",
    "generate_benchmark",
    "generate_split",
    "load_pruned_clip_state",
    "render_split_image",
    "save_pruned_clip",
    "seen_mask",
]

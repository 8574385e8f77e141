"""Inference layer: protocol config, test-time resizing, batched sliding windows, post-processing, PAMR."""

from ovs.inference.config import InferenceConfig
from ovs.inference.pamr import pamr, pamr_affinity
from ovs.inference.postprocess import (
    PostProcessed,
    area_threshold,
    class_probabilities,
    minmax_normalize,
    postprocess,
)
from ovs.inference.resize import resize_for_inference, resize_logits
from ovs.inference.slide import Window, WindowEncoder, centred_padding, slide_inference, window_grid

__all__ = [
    "InferenceConfig",
    "PostProcessed",
    "Window",
    "WindowEncoder",
    "area_threshold",
    "centred_padding",
    "class_probabilities",
    "minmax_normalize",
    "pamr",
    "pamr_affinity",
    "postprocess",
    "resize_for_inference",
    "resize_logits",
    "slide_inference",
    "window_grid",
]

"""ovs: open-vocabulary segmentation with CLIP (MaskCLIP++, training-free dense methods, MaskInversion, InvSeg)."""

from ovs.backbones import TextClassifier, build_text_classifier, create_clip

__version__ = "0.1.0"

__all__ = ["TextClassifier", "__version__", "build_text_classifier", "create_clip"]

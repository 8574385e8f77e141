"""ovs: open-vocabulary segmentation with CLIP (MaskCLIP++, training-free dense methods, one evaluation table).

The small Python API:

* :func:`create_clip` — any open_clip model with offline weights and a dense, hookable view of its vision tower.
* :func:`build_text_classifier` — class names (with synonyms) x templates -> cached, normalised embeddings.
* :func:`segment` / :func:`create_segmenter` — training-free open-vocabulary segmentation of an image.
* :func:`mask_embeddings` — localized CLIP embeddings of masks (MaskInversion or a region baseline).
"""

from ovs.backbones import TextClassifier, build_text_classifier, create_clip
from ovs.methods import SegmentationResult, create_segmenter, segment
from ovs.methods.maskinversion.api import mask_embeddings

__version__ = "0.1.0"

__all__ = [
    "SegmentationResult",
    "TextClassifier",
    "__version__",
    "build_text_classifier",
    "create_clip",
    "create_segmenter",
    "mask_embeddings",
    "segment",
]

"""MaskCLIP++: mask-based CLIP fine-tuning for open-vocabulary segmentation (spec: ../shared/specs/maskclippp.md).

See docs/maskclippp.md for the recipe, configs and the decisions taken where the reference code has known problems.
"""

from ovs.methods.maskclippp.encoders import (
    ConvNeXtMaskPooling,
    EvaMaskTokens,
    MaskBatch,
    MaskEmbeddings,
    MaskEncoder,
    ResNetMaskAttentionPool,
    ViTMaskTokens,
    build_mask_encoder,
)
from ovs.methods.maskclippp.fusion import fuse_scores, train_to_test_lut
from ovs.methods.maskclippp.loss import ReweightCELoss, reweight_ce_weights
from ovs.methods.maskclippp.metrics import MaskAccuracy
from ovs.methods.maskclippp.module import MaskCLIPPP
from ovs.methods.maskclippp.postprocess import instance_inference, panoptic_inference, semantic_inference
from ovs.methods.maskclippp.psm import LinearPSM, NoPSM, PseudoTextPSM, SimilarityInputs, build_psm

__all__ = [
    "ConvNeXtMaskPooling",
    "EvaMaskTokens",
    "LinearPSM",
    "MaskAccuracy",
    "MaskBatch",
    "MaskCLIPPP",
    "MaskEmbeddings",
    "MaskEncoder",
    "NoPSM",
    "PseudoTextPSM",
    "ReweightCELoss",
    "ResNetMaskAttentionPool",
    "SimilarityInputs",
    "ViTMaskTokens",
    "build_mask_encoder",
    "build_psm",
    "fuse_scores",
    "instance_inference",
    "panoptic_inference",
    "reweight_ce_weights",
    "semantic_inference",
    "train_to_test_lut",
]

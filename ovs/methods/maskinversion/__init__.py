"""MaskInversion (Bousselham et al., arXiv 2407.20034): localized embeddings by optimising a token so that its LeGrad
explainability map matches a mask (maskinversion spec), the exact gradient decomposition, the region baselines and
the class- and referring-expression retrieval LightningModules."""

from ovs.methods.maskinversion.baselines import (
    BASELINES,
    EMBEDDERS,
    BaselineEmbedder,
    MaskInversionEmbedder,
    RegionEmbedder,
    build_embedder,
)
from ovs.methods.maskinversion.inversion import InversionConfig, InversionResult, dice_loss, invert
from ovs.methods.maskinversion.legrad import legrad_maps
from ovs.methods.maskinversion.module import RegionRetrieval
from ovs.methods.maskinversion.referring import ReferringRetrievalModule

__all__ = [
    "BASELINES",
    "EMBEDDERS",
    "BaselineEmbedder",
    "InversionConfig",
    "InversionResult",
    "MaskInversionEmbedder",
    "RegionEmbedder",
    "ReferringRetrievalModule",
    "RegionRetrieval",
    "build_embedder",
    "dice_loss",
    "invert",
    "legrad_maps",
]

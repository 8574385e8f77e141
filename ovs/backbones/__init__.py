"""CLIP backbone layer: open_clip loading, hookable ViT forward, ConvNeXt / ResNet dense features, text classifier."""

from ovs.backbones.cnn import CLIPConvNeXt, CLIPResNet
from ovs.backbones.eva import CLIPEva
from ovs.backbones.factory import CLIP, WeightsNotFoundError, create_clip, load_state_dict_file, register_model_configs
from ovs.backbones.templates import TEMPLATE_SETS, get_templates
from ovs.backbones.text import TextClassifier, build_text_classifier
from ovs.backbones.vit import (
    AttentionFn,
    AttentionInputs,
    BlockOverride,
    CLIPViT,
    ParallelPathway,
    ViTDenseOutput,
    ViTPolicy,
    interpolate_pos_embed,
    softmax_attention,
)

register_model_configs()

__all__ = [
    "CLIP",
    "AttentionFn",
    "AttentionInputs",
    "BlockOverride",
    "CLIPConvNeXt",
    "CLIPEva",
    "CLIPResNet",
    "CLIPViT",
    "ParallelPathway",
    "TEMPLATE_SETS",
    "TextClassifier",
    "ViTDenseOutput",
    "ViTPolicy",
    "WeightsNotFoundError",
    "build_text_classifier",
    "create_clip",
    "get_templates",
    "interpolate_pos_embed",
    "load_state_dict_file",
    "register_model_configs",
    "softmax_attention",
]

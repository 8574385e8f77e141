"""FC-CLIP / MAFT+ mask generators in plain PyTorch (maskclippp.md §8.2 steps 1-4, §8.6; FC-CLIP paper §3).

The network, as MaskCLIP++'s ``FCCLIPSegmentor`` on its ``CLIPConvNeXt`` generator encoder:

* **backbone**: the frozen open_clip ConvNeXt visual trunk (``convnext_base_w_320`` / ``convnext_large_d_320``):
  ``res2 = stages[0](stem(x))``, ``res3..res5`` = the next stages (strides 4 / 8 / 16 / 32), as FC-CLIP's
  ``extract_features_convnext``;
* **pixel decoder**: Mask2Former's multi-scale deformable-attention decoder on ``res3..res5`` plus one FPN step on
  ``res2`` (:class:`~ovs.generators.native.pixel_decoder.MSDeformAttnPixelDecoder`);
* **transformer decoder**: the masked-attention decoder whose class head (:class:`FCCLIPDecoder`) adds FC-CLIP's
  mask-pooled pixel features to the queries, ``e_q = class_embed(norm(q) + proj(MaskPool(F, m_q > 0)))``, and scores
  ``min(exp(logit_scale), 100) · cos(e_q, [text; void])``, max over synonyms
  (:class:`~ovs.generators.native.class_head.OpenVocabClassHead`);
* **text classifier**: the generator CLIP's text tower on FC-CLIP's 14 templates, every sentence L2-normalised,
  averaged over templates and re-normalised, one row per synonym (spec §6.3 ``test_t_embs_f``), computed by
  :meth:`NativeFCCLIP.set_vocabulary` and cached per vocabulary.

Pre-processing per image (batch 1, spec §8.2 steps 1-2): the test mapper's ``ResizeShortestEdge(min_size_test,
max_size_test)`` (PIL bilinear on uint8), normalisation with CLIP's mean / std in 0-255 units, the generator
encoder's own resize of the short side to ``image_size`` (long side ``int(long · size / short)``, bilinear,
``align_corners=False``; a no-op unless the mapper capped the long side) and zero padding to a multiple of 32.
Masks = sigmoid(mask logits) upsampled to the padded input, cropped to the resized image and resized to the original
size (step 4). Weights: :mod:`ovs.generators.native.fcclip_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ovs.backbones import CLIP, WeightsNotFoundError, build_text_classifier, create_clip
from ovs.data.class_names import load_class_names
from ovs.data.transforms import short_side_size
from ovs.generators.base import Batch, MaskGenerator, MaskProposals, original_sizes
from ovs.generators.native.class_head import OpenVocabClassHead
from ovs.generators.native.fcclip_weights import load_fcclip_weights
from ovs.generators.native.mask2former import resize_shortest_edge
from ovs.generators.native.pixel_decoder import MSDeformAttnPixelDecoder
from ovs.generators.native.transformer_decoder import MaskedAttentionDecoder

CLIP_PIXEL_MEAN_255 = (122.7709383, 116.7460125, 104.09373615)
"""OpenAI CLIP mean in 0-255 units: the ``PIXEL_MEAN`` of FC-CLIP's configs and of MaskCLIP++'s generator encoder."""
CLIP_PIXEL_STD_255 = (68.5005327, 66.6321579, 70.32316305)
CONVNEXT_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def convnext_channels(clip: CLIP) -> dict[str, int]:
    """Channels of ``res2..res5`` of an open_clip ConvNeXt CLIP (128 / 256 / 512 / 1024 for ConvNeXt-B)."""
    if clip.architecture != "convnext":
        raise ValueError(f"FC-CLIP / MAFT+ generators need an open_clip ConvNeXt CLIP; {clip.model_name!r} is a "
                         f"{clip.architecture} model (use convnext_base_w_320 or convnext_large_d_320).")
    trunk = clip.model.visual.trunk
    if len(trunk.stages) != 4:
        raise ValueError(f"{clip.model_name!r} has {len(trunk.stages)} ConvNeXt stages; FC-CLIP uses 4.")
    return {name: int(info["num_chs"]) for name, info in zip(CONVNEXT_STRIDES, trunk.feature_info)}


def convnext_features(clip: CLIP, images: Tensor) -> dict[str, Tensor]:
    """FC-CLIP's ConvNeXt features of normalised images ``[B, 3, H, W]``: ``res2 [B, C1, H/4, W/4]`` (first stage
    after the stem) .. ``res5 [B, C4, H/32, W/32]``."""
    trunk = clip.model.visual.trunk
    x = trunk.stem(images)  # [B, C0, H/4, W/4]
    features = {}
    for name, stage in zip(CONVNEXT_STRIDES, trunk.stages):
        x = stage(x)
        features[name] = x
    return features


def mask_pooling(features: Tensor, mask_logits: Tensor) -> Tensor:
    """FC-CLIP's ``MaskPooling``: mean of ``features`` ``[B, C, h, w]`` over the pixels where ``mask_logits``
    ``[B, Q, h, w]`` > 0 (1e-8 in the denominator: an empty mask pools to 0) -> ``[B, Q, C]``."""
    binary = (mask_logits.detach() > 0).to(features.dtype)
    weights = binary / (binary.sum(dim=(-1, -2), keepdim=True) + 1e-8)
    return torch.einsum("bchw,bqhw->bqc", features, weights)


class FCCLIPDecoder(MaskedAttentionDecoder):
    """Masked-attention decoder with FC-CLIP's class head (``fcclip_transformer_decoder.py``): the normed queries
    plus a LayerNorm + Linear projection (``mask_pooling_proj``) of the mask-pooled mask features go through
    :class:`~ovs.generators.native.class_head.OpenVocabClassHead` (``class_embed``: 3-layer MLP to the CLIP width,
    ``logit_scale``, ``void_embedding``)."""

    def __init__(self, in_channels: int, embed_dim: int, hidden_dim: int = 256, num_queries: int = 250,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256) -> None:
        super().__init__(in_channels, 0, hidden_dim, num_queries, nheads, dim_feedforward, dec_layers, mask_dim,
                         class_head=OpenVocabClassHead(hidden_dim, embed_dim, mlp_layers=3))
        self.mask_pooling_proj = nn.Sequential(nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim))

    def predict(self, output: Tensor, mask_features: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        decoded = self.decoder_norm(output)  # [B, N, C]
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)  # [B, N, H4, W4]
        pooled = self.mask_pooling_proj(mask_pooling(mask_features, masks))  # [B, N, C]
        logits = self.class_embed(decoded + pooled)  # [B, N, K + 1]
        attn = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid().flatten(2) < 0.5
        attn = attn[:, None].expand(-1, self.num_heads, -1, -1).flatten(0, 1)  # [B heads, N, h w]
        return logits, masks, attn.detach()


class FCCLIPHead(nn.Module):
    """FC-CLIP's ``sem_seg_head`` (pixel decoder + :class:`FCCLIPDecoder`) on ConvNeXt features ``res2..res5``;
    ``forward`` returns ``pred_logits [B, Q, K + 1]``, ``pred_masks [B, Q, H/4, W/4]`` and ``aux_outputs``."""

    def __init__(self, in_channels: dict[str, int], embed_dim: int, num_queries: int = 250, hidden_dim: int = 256,
                 conv_dim: int = 256, mask_dim: int = 256, enc_layers: int = 6, enc_ffn_dim: int = 1024,
                 dec_layers: int = 9, nheads: int = 8, dim_feedforward: int = 2048) -> None:
        super().__init__()
        self.pixel_decoder = MSDeformAttnPixelDecoder(in_channels, CONVNEXT_STRIDES, conv_dim, mask_dim, enc_layers,
                                                      nheads, ffn_dim=enc_ffn_dim)
        self.decoder = FCCLIPDecoder(conv_dim, embed_dim, hidden_dim, num_queries, nheads, dim_feedforward,
                                     dec_layers, mask_dim)
        self.fpn_levels = len(self.pixel_decoder.fpn_features)

    @property
    def class_head(self) -> OpenVocabClassHead:
        return self.decoder.class_embed  # type: ignore[return-value]

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor | list[dict[str, Tensor]]]:
        mask_features, multi_scale = self.pixel_decoder(features)
        return self.decoder(multi_scale, mask_features)


class NativeFCCLIP(MaskGenerator):
    """Open-vocabulary FC-CLIP / MAFT+ generator (spec §8.6): scores the vocabulary given to :meth:`set_vocabulary`.

    Args:
        weights: ``fcclip_coco-pan_*.pth`` / ``maftp_*.pth`` (detectron2 naming: ``sem_seg_head.*``,
            ``void_embedding.weight``, ``backbone.clip_model.*``); ``None`` keeps the random head (tests).
        clip_model: open_clip name of the generator CLIP (``convnext_base_w_320`` / ``convnext_large_d_320``).
        clip_pretrained: its open_clip tag or weights file (ovs's factory: local caches only); ``None`` = random
            (tests, or MAFT+ checkpoints that hold the whole CLIP).
        clip_from_checkpoint: load the CLIP's visual and text towers from ``backbone.clip_model.*`` of ``weights``
            (MAFT+, whose ConvNeXt is fine-tuned: MaskCLIP++'s ``LOAD_BEG_KEY``); ``False`` (FC-CLIP, frozen CLIP)
            ignores those tensors as the reference does.
        clip_cache_dir: extra directory searched first for ``clip_pretrained``.
        num_queries: 250 (FC-CLIP) or 100 (MAFT+).
        dec_layers, hidden_dim, conv_dim, mask_dim, enc_layers, enc_ffn_dim, nheads, dim_feedforward: head sizes
            (9, 256, 256, 256, 6, 1024, 8, 2048 in every release).
        templates: template set of the text classifier (``fcclip14``, spec §6.1 ``TEMPLATES_F``).
        training_vocabulary: class-name file or synonym lists of the generator's training set 𝒦 (the seen set).
        min_size_test, max_size_test: the test mapper's resize (800 / 2560 coco-pan configs, 1024 / 2048 ConvNeXt-B
            coco-stuff, 512 / 2048 EVA-L coco-stuff); ``None`` skips it.
        image_size: the generator encoder's short side (800).
        size_divisibility: padding multiple (32).
        pixel_mean, pixel_std: normalisation in 0-255 units (CLIP's, as the reference's configs).
    """

    open_vocabulary = True

    def __init__(self, weights: str | None = None, clip_model: str = "convnext_base_w_320",
                 clip_pretrained: str | None = "laion_aesthetic_s13b_b82k_augreg", clip_from_checkpoint: bool = False,
                 clip_cache_dir: str | None = None, num_queries: int = 250, dec_layers: int = 9,
                 hidden_dim: int = 256, conv_dim: int = 256, mask_dim: int = 256, enc_layers: int = 6,
                 enc_ffn_dim: int = 1024, nheads: int = 8, dim_feedforward: int = 2048,
                 templates: str | Sequence[str] = "fcclip14",
                 training_vocabulary: str | list[list[str]] | None = "coco_panoptic",
                 min_size_test: int | None = 800, max_size_test: int = 2560, image_size: int = 800,
                 size_divisibility: int = 32, pixel_mean: Sequence[float] = CLIP_PIXEL_MEAN_255,
                 pixel_std: Sequence[float] = CLIP_PIXEL_STD_255) -> None:
        super().__init__()
        if clip_from_checkpoint and weights is None:
            raise ValueError("clip_from_checkpoint=True loads the CLIP from `weights`; give the maftp_*.pth file.")
        try:
            self.clip = create_clip(clip_model, clip_pretrained, cache_dir=clip_cache_dir)
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(f"The generator CLIP (clip_model / clip_pretrained of NativeFCCLIP) is missing. "
                                       f"{error}") from None
        self.head = FCCLIPHead(convnext_channels(self.clip), self.clip.embed_dim, num_queries, hidden_dim, conv_dim,
                               mask_dim, enc_layers, enc_ffn_dim, dec_layers, nheads, dim_feedforward)
        if weights is not None:
            load_fcclip_weights(self.head, self.clip.model, Path(weights), clip_from_checkpoint,
                                clip_pretrained is not None)
        self.requires_grad_(False).eval()
        self.templates = tuple(templates) if not isinstance(templates, str) else templates
        names = training_vocabulary
        self.training_vocabulary = load_class_names(names) if isinstance(names, str) else names
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.image_size, self.size_divisibility = image_size, size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).float().view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).float().view(3, 1, 1), persistent=False)
        self._classifier_names: list[list[str]] | None = None

    def set_vocabulary(self, class_names: Sequence[Sequence[str]]) -> None:
        """Build the head's text classifier for ``class_names`` (synonyms per class; spec §6.3); a repeated
        vocabulary reuses the classifier already set."""
        super().set_vocabulary(class_names)
        if self.vocabulary == self._classifier_names:
            return
        classifier = build_text_classifier(self.clip, self.vocabulary, self.templates)  # type: ignore[arg-type]
        self.head.class_head.set_classifier(classifier.embeddings.clone(), classifier.name_to_class.clone())
        self._classifier_names = [list(names) for names in self.vocabulary]  # type: ignore[union-attr]

    def preprocess(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """uint8 ``[3, H, W]`` RGB -> (normalised zero-padded ``[1, 3, Hp, Wp]``, unpadded ``(h, w)``)."""
        array = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # [H, W, 3]
        if self.min_size_test is not None:
            size = resize_shortest_edge(array.shape[0], array.shape[1], self.min_size_test, self.max_size_test)
            if size != array.shape[:2]:
                array = np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR))
        x = torch.from_numpy(np.array(array)).to(self.pixel_mean.device).permute(2, 0, 1).float()  # [3, h, w]
        x = (x - self.pixel_mean) / self.pixel_std
        size = short_side_size(x.shape[1], x.shape[2], self.image_size, truncate=True)
        if size != tuple(x.shape[1:]):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        div = self.size_divisibility
        return F.pad(x, (0, (-size[1]) % div, 0, (-size[0]) % div))[None], size

    @torch.inference_mode()
    def _run(self, image: Tensor, size: tuple[int, int]) -> MaskProposals:
        x, resized = self.preprocess(image)
        output = self.head(convnext_features(self.clip, x))
        logits = output["pred_logits"][0].float()  # [Q, K + 1]
        masks = output["pred_masks"][0].float().sigmoid()  # [Q, Hp/4, Wp/4]
        masks = F.interpolate(masks[None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        masks = masks[..., : resized[0], : resized[1]]
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0]  # [Q, H, W]
        return MaskProposals(masks.clamp(0, 1), logits)

    def forward(self, batch: Batch) -> list[MaskProposals]:
        if self._classifier_names is None:
            raise RuntimeError("NativeFCCLIP scores the test vocabulary: call set_vocabulary(class_names) first.")
        return [self._run(image, size) for image, size in zip(batch["image"], original_sizes(batch))]

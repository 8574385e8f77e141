"""Mask2Former (R50, Swin-T / Swin-L, ...) in plain PyTorch and its :class:`~ovs.generators.base.MaskGenerator`
(maskclippp.md §8.2 steps 1-4, §8.6): no detectron2 needed, the released detectron2 weights load through an
explicit key map (:mod:`ovs.generators.native.weights`).

Per image, as the reference (batch 1): detectron2's ``ResizeShortestEdge`` (short side ``min_size_test``, long side
at most ``max_size_test``, rounded sizes, PIL bilinear on uint8), ``(x - pixel_mean) / pixel_std``, zero padding
to ``size_divisibility``; masks = sigmoid(mask logits) bilinearly upsampled to the padded input, cropped to the
resized image and resized to the original size. Logits: ``[Q, K + 1]`` with void last (closed vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from ovs.data.class_names import load_class_names
from ovs.generators.base import Batch, MaskGenerator, MaskProposals, original_sizes
from ovs.generators.native.pixel_decoder import MSDeformAttnPixelDecoder
from ovs.generators.native.backbones import build_backbone
from ovs.generators.native.transformer_decoder import MaskedAttentionDecoder
from ovs.generators.native.weights import load_mask2former_weights

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


class Mask2Former(nn.Module):
    """Backbone + pixel decoder + masked-attention decoder; ``forward`` takes normalised, padded images
    ``[B, 3, H, W]`` (H, W divisible by 32) and returns ``pred_logits [B, Q, K + 1]``, ``pred_masks
    [B, Q, H/4, W/4]`` and ``aux_outputs`` (one dict per earlier decoder layer). ``class_head`` replaces the
    decoder's linear classifier (FC-CLIP / MAFT+ head, :mod:`ovs.generators.native.class_head`); ``backbone`` names
    one of :data:`~ovs.generators.native.backbones.BACKBONES`."""

    def __init__(self, num_classes: int = 133, num_queries: int = 100, hidden_dim: int = 256, conv_dim: int = 256,
                 mask_dim: int = 256, enc_layers: int = 6, enc_ffn_dim: int = 1024, dec_layers: int = 9,
                 nheads: int = 8, dim_feedforward: int = 2048,
                 pixel_mean: Sequence[float] = IMAGENET_MEAN_255, pixel_std: Sequence[float] = IMAGENET_STD_255,
                 class_head: nn.Module | None = None, backbone: str = "R50") -> None:
        super().__init__()
        self.backbone = build_backbone(backbone)
        self.pixel_decoder = MSDeformAttnPixelDecoder(self.backbone.out_channels, self.backbone.out_strides, conv_dim,
                                                      mask_dim, enc_layers, nheads, ffn_dim=enc_ffn_dim)
        self.decoder = MaskedAttentionDecoder(conv_dim, num_classes, hidden_dim, num_queries, nheads, dim_feedforward,
                                              dec_layers, mask_dim, class_head)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.fpn_levels = len(self.pixel_decoder.fpn_features)

    def forward(self, images: Tensor) -> dict[str, Tensor | list[dict[str, Tensor]]]:
        mask_features, multi_scale = self.pixel_decoder(self.backbone(images))
        return self.decoder(multi_scale, mask_features)


def resize_shortest_edge(height: int, width: int, short: int, long: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: scale the short side to ``short``, cap the long side at
    ``long``, round half up."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > long:
        cap = long / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return int(new_h + 0.5), int(new_w + 0.5)


class NativeMask2Former(MaskGenerator):
    """Closed-vocabulary Mask2Former generator in plain PyTorch (same outputs as the detectron2 adapter).

    Args:
        weights: released ``model_final_*.pkl`` / ``.pth`` (detectron2 or native naming); ``None`` keeps the random
            initialisation (tests).
        num_classes, num_queries: classifier size K and queries N of the checkpoint (133 / 100 for COCO-Panoptic).
        dec_layers: decoder layers (detectron2 ``DEC_LAYERS`` - 1 = 9).
        hidden_dim, conv_dim, mask_dim, enc_layers, enc_ffn_dim, nheads, dim_feedforward: head sizes (256, 256,
            256, 6, 1024, 8, 2048 in the released R50 models).
        training_vocabulary: class-name file or synonym lists of the classifier's K classes (label order).
        min_size_test, max_size_test, size_divisibility: test resize and padding (800 / 1333 / 32).
        input_format: ``RGB`` (the released R50 models) or ``BGR``.
        pixel_mean, pixel_std: normalisation in 0-255 units (the config's ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``; not
            stored in detectron2 checkpoints).
        backbone: one of :data:`~ovs.generators.native.backbones.BACKBONES` (``R50``, ``swin_t``, ``swin_l``, ...).
    """

    def __init__(self, weights: str | None = None, num_classes: int = 133, num_queries: int = 100,
                 dec_layers: int = 9, hidden_dim: int = 256, conv_dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 6, enc_ffn_dim: int = 1024, nheads: int = 8, dim_feedforward: int = 2048,
                 training_vocabulary: str | list[list[str]] = "coco_panoptic", min_size_test: int = 800,
                 max_size_test: int = 1333, size_divisibility: int = 32, input_format: str = "RGB",
                 pixel_mean: Sequence[float] = IMAGENET_MEAN_255,
                 pixel_std: Sequence[float] = IMAGENET_STD_255, backbone: str = "R50") -> None:
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}.")
        self.model = Mask2Former(num_classes, num_queries, hidden_dim, conv_dim, mask_dim, enc_layers, enc_ffn_dim,
                                 dec_layers, nheads, dim_feedforward, pixel_mean, pixel_std, backbone=backbone)
        if weights is not None:
            load_mask2former_weights(self.model, Path(weights), self.model.fpn_levels)
        self.model.eval().requires_grad_(False)
        names = training_vocabulary
        self.training_vocabulary = load_class_names(names) if isinstance(names, str) else names
        if len(self.training_vocabulary) != num_classes:
            raise ValueError(f"The generator classifies {num_classes} classes but training_vocabulary has "
                             f"{len(self.training_vocabulary)}; give the class names of its training set in label order.")
        self.min_size_test, self.max_size_test = min_size_test, max_size_test
        self.size_divisibility, self.input_format = size_divisibility, input_format

    def preprocess(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """uint8 ``[3, H, W]`` RGB -> (normalised zero-padded ``[1, 3, Hp, Wp]``, resized ``(h, w)``)."""
        height, width = image.shape[-2:]
        size = resize_shortest_edge(height, width, self.min_size_test, self.max_size_test)
        array = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # [H, W, 3]
        if size != (height, width):
            array = np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR))
        if self.input_format == "BGR":
            array = array[:, :, ::-1]
        device = self.model.pixel_mean.device
        x = torch.from_numpy(np.array(array)).to(device).permute(2, 0, 1).float()  # [3, h, w]
        x = (x - self.model.pixel_mean) / self.model.pixel_std
        div = self.size_divisibility
        pad_h, pad_w = (-size[0]) % div, (-size[1]) % div
        return F.pad(x, (0, pad_w, 0, pad_h))[None], size

    @torch.inference_mode()
    def _run(self, image: Tensor, size: tuple[int, int]) -> MaskProposals:
        x, resized = self.preprocess(image)
        output = self.model(x)
        logits = output["pred_logits"][0].float()  # [Q, K + 1]
        masks = output["pred_masks"][0].float().sigmoid()  # [Q, Hp/4, Wp/4]
        masks = F.interpolate(masks[None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        masks = masks[..., : resized[0], : resized[1]]
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)[0]  # [Q, H, W]
        return MaskProposals(masks.clamp(0, 1), logits, self.training_vocabulary)

    def forward(self, batch: Batch) -> list[MaskProposals]:
        return [self._run(image, size) for image, size in zip(batch["image"], original_sizes(batch))]

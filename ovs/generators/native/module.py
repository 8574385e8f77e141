"""Train (or fine-tune) the native Mask2Former as a LightningModule (issue 13 item 4; Mask2Former paper §4 "Training
settings", its ``Base-COCO-PanopticSegmentation.yaml`` / ``build_optimizer``).

:class:`Mask2FormerModule` reads the repository's panoptic training samples (``masks`` ``bool [N, H, W]`` and
``mask_labels`` ``int64 [N]``, docs/architecture.md), maps the dataset's classes onto its training vocabulary by
first name (classes outside it, e.g. unseen ones, are dropped), normalises and zero-pads the images to a multiple of
32 and minimises :class:`~ovs.generators.native.criterion.Mask2FormerCriterion`. Optimisation as the reference:
AdamW (LR 1e-4, weight decay 0.05, none on normalisation layers and embeddings), the backbone at 0.1 × LR, the
poly schedule ``(1 − step / total)^0.9`` per step and full-model gradient-norm clipping at 0.01. The trained weights
become a :class:`~ovs.generators.native.NativeMask2Former` with :meth:`Mask2FormerModule.to_generator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ovs.data.class_names import load_class_names, normalize_name
from ovs.generators.native.criterion import Mask2FormerCriterion, Target
from ovs.generators.native.mask2former import Mask2Former, NativeMask2Former
from ovs.generators.native.weights import load_mask2former_weights

NO_DECAY_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.Embedding)


def poly_multiplier(step: int, total_steps: int, power: float = 0.9) -> float:
    """detectron2 ``WarmupPolyLR`` (warm-up factor 1.0, constant ending 0): ``(1 − step / total)^power``."""
    return (1.0 - min(step, total_steps) / max(total_steps, 1)) ** power


def vocabulary_label_map(dataset_names: list[list[str]], vocabulary: list[list[str]]) -> Tensor:
    """``int64 [K_dataset]``: vocabulary index of each dataset class by normalised first name, −1 outside it.

    Raises:
        ValueError: when a vocabulary class is not a dataset class.
    """
    index = {normalize_name(names[0]): i for i, names in enumerate(vocabulary)}
    missing = sorted(set(index) - {normalize_name(names[0]) for names in dataset_names})
    if missing:
        raise ValueError(f"{len(missing)} classes of model.class_names are not classes of the training dataset "
                         f"(e.g. {missing[:3]}); list dataset classes (matched by their first name).")
    return torch.tensor([index.get(normalize_name(names[0]), -1) for names in dataset_names], dtype=torch.int64)


class Mask2FormerModule(LightningModule):
    """Mask2Former training (closed vocabulary ``class_names``).

    Args:
        class_names: training vocabulary (class-name file or synonym lists, label order); K = its length.
        weights: optional released / native checkpoint to start from (its classifier must have K + 1 outputs).
        num_queries, hidden_dim, conv_dim, mask_dim, enc_layers, enc_ffn_dim, dec_layers, nheads, dim_feedforward:
            model sizes (:class:`~ovs.generators.native.mask2former.Mask2Former`; R50 defaults 100, 256, 256, 256, 6,
            1024, 9, 8, 2048).
        class_weight, mask_weight, dice_weight, eos_coef, num_points, oversample_ratio, importance_sample_ratio:
            criterion (2, 5, 5, 0.1, 12544, 3.0, 0.75; ``num_points: null`` uses every pixel).
        lr, weight_decay, backbone_multiplier, poly_power: optimiser and schedule (1e-4, 0.05, 0.1, 0.9).
        gradient_clip: full-model gradient-norm clip (0.01) used unless the Trainer sets ``gradient_clip_val``.
        freeze_backbone: keep the backbone fixed (not in the reference R50 recipe, which trains it at 0.1 × LR;
            FC-CLIP-style frozen backbones, fast CPU runs).
        size_divisibility: padding multiple of the input (32).
        backbone: one of :data:`~ovs.generators.native.backbones.BACKBONES` (``R50``, ``swin_t``, ``swin_l``, ...).
    """

    def __init__(self, class_names: str | list[list[str]], weights: str | None = None, num_queries: int = 100,
                 hidden_dim: int = 256, conv_dim: int = 256, mask_dim: int = 256, enc_layers: int = 6,
                 enc_ffn_dim: int = 1024, dec_layers: int = 9, nheads: int = 8, dim_feedforward: int = 2048,
                 class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 eos_coef: float = 0.1, num_points: int | None = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, lr: float = 1e-4, weight_decay: float = 0.05,
                 backbone_multiplier: float = 0.1, poly_power: float = 0.9, gradient_clip: float | None = 0.01,
                 freeze_backbone: bool = False, size_divisibility: int = 32, backbone: str = "R50") -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0 or backbone_multiplier < 0:
            raise ValueError(f"Need lr > 0, weight_decay >= 0, backbone_multiplier >= 0; got {lr}, {weight_decay}, "
                             f"{backbone_multiplier}.")
        if size_divisibility < 32 or size_divisibility % 32:
            raise ValueError(f"size_divisibility must be a multiple of 32 (the backbone's stride), got "
                             f"{size_divisibility}.")
        self.vocabulary = load_class_names(class_names) if isinstance(class_names, str) else [
            list(n) for n in class_names]
        self.save_hyperparameters()
        self.hparams.class_names = self.vocabulary  # checkpoints carry the names, not a path
        self.configure_models()
        self.configure_losses()
        self.register_buffer("label_map", torch.arange(len(self.vocabulary)), persistent=False)

    @property
    def model_sizes(self) -> dict[str, int | str]:
        """Constructor sizes shared by :class:`Mask2Former` and :class:`NativeMask2Former`."""
        keys = ("num_queries", "hidden_dim", "conv_dim", "mask_dim", "enc_layers", "enc_ffn_dim", "dec_layers",
                "nheads", "dim_feedforward", "backbone")
        return {k: self.hparams[k] for k in keys}

    def configure_models(self) -> None:
        """The Mask2Former (random initialisation with FrozenBN statistics, or ``weights``)."""
        self.model = Mask2Former(num_classes=len(self.vocabulary), **self.model_sizes)
        if self.hparams.weights is not None:
            load_mask2former_weights(self.model, Path(self.hparams.weights), self.model.fpn_levels)
        if self.hparams.freeze_backbone:
            self.model.backbone.requires_grad_(False)

    def configure_losses(self) -> None:
        """Matching and losses with deep supervision (criterion.py)."""
        hp = self.hparams
        self.criterion = Mask2FormerCriterion(len(self.vocabulary), hp.class_weight, hp.mask_weight, hp.dice_weight,
                                              hp.eos_coef, hp.num_points, hp.oversample_ratio,
                                              hp.importance_sample_ratio)

    def setup(self, stage: str) -> None:
        """Map the training DataModule's class ids onto the vocabulary (identity without a DataModule)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        if names is not None:
            self.label_map = vocabulary_label_map([list(n) for n in names], self.vocabulary).to(self.device)

    def prepare_batch(self, batch: dict[str, list[Any]]) -> tuple[Tensor, list[Target]]:
        """Images (uint8 ``[3, H_b, W_b]``) -> normalised, zero-padded ``[B, 3, H, W]`` (H, W multiples of
        ``size_divisibility``); masks / labels -> targets padded to ``H, W`` with vocabulary labels."""
        images, masks, labels = batch["image"], batch["masks"], batch["mask_labels"]
        div = self.hparams.size_divisibility
        height = -(-max(x.shape[-2] for x in images) // div) * div
        width = -(-max(x.shape[-1] for x in images) // div) * div
        mean, std = self.model.pixel_mean, self.model.pixel_std
        padded, targets = [], []
        for image, image_masks, image_labels in zip(images, masks, labels):
            if image_labels.numel() and int(image_labels.max()) >= self.label_map.numel():
                raise ValueError(f"mask label {int(image_labels.max())} is outside the {self.label_map.numel()} "
                                 "classes the module maps; train with a DataModule that has `class_names`.")
            pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
            padded.append(F.pad((image.to(self.device).float() - mean) / std, pad))  # [3, H, W]
            mapped = self.label_map[image_labels.to(self.device)]  # [N]
            keep = mapped >= 0
            targets.append({"labels": mapped[keep],
                            "masks": F.pad(image_masks.to(self.device)[keep].float(), pad)})  # [N', H, W]
        return torch.stack(padded), targets

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Normalised padded images ``[B, 3, H, W]`` -> Mask2Former outputs."""
        return self.model(images)

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> Tensor:
        images, targets = self.prepare_batch(batch)
        losses = self.criterion(self(images), targets)
        batch_size = images.shape[0]
        for name in ("loss", "loss_ce", "loss_mask", "loss_dice"):
            self.log(f"train/{name}", losses[name], batch_size=batch_size, prog_bar=name == "loss")
        return losses["loss"]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: backbone at ``backbone_multiplier`` × LR, no weight decay on norms / embeddings; poly per step."""
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for module_name, module in self.model.named_modules():
            for name, parameter in module.named_parameters(recurse=False):
                if not parameter.requires_grad:
                    continue
                no_decay = isinstance(module, NO_DECAY_LAYERS) or name in (  # Swin: WEIGHT_DECAY_EMBED 0
                    "logit_scale", "relative_position_bias_table")
                groups.setdefault((module_name.startswith("backbone."), no_decay), []).append(parameter)
        param_groups = [
            {"params": params, "lr": hp.lr * (hp.backbone_multiplier if backbone else 1.0),
             "weight_decay": 0.0 if no_decay else hp.weight_decay,
             "name": f"{'backbone' if backbone else 'head'}{'_no_decay' if no_decay else ''}"}
            for (backbone, no_decay), params in sorted(groups.items())
        ]
        optimizer = AdamW(param_groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = LambdaLR(optimizer, lambda step: poly_multiplier(step, total, hp.poly_power))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Mask2Former's ``CLIP_TYPE full_model``: one gradient-norm clip over every parameter (0.01)."""
        value = self.hparams.gradient_clip if gradient_clip_val is None else gradient_clip_val
        if value:
            self.clip_gradients(optimizer, value, gradient_clip_algorithm or "norm")

    def to_generator(self, **kwargs: Any) -> NativeMask2Former:
        """A :class:`NativeMask2Former` with the trained weights and vocabulary (``kwargs``: its test resize)."""
        generator = NativeMask2Former(num_classes=len(self.vocabulary), training_vocabulary=self.vocabulary,
                                      **self.model_sizes, **kwargs)
        generator.model.load_state_dict(self.model.state_dict())
        return generator.to(self.device)

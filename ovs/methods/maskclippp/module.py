"""MaskCLIP++: fine-tune CLIP for mask classification with ground-truth masks (paper §3, spec §2-§6, §9).

:class:`MaskCLIPPP` is a LightningModule (torchgeo style: ``configure_models`` / ``configure_losses`` /
``configure_metrics`` / ``configure_optimizers``):

* training: GT masks of COCO-Panoptic / COCO-Stuff crops -> mask embeddings (``encoders``) -> cosine similarities
  with frozen, precomputed text embeddings of one sampled synonym per class (or a fine-tuned text encoder) -> PSM ->
  class-reweighted CE (``loss``);
* validation / test (``evaluation``): without a ``generator``, the "GT-mask oracle" — every ground-truth mask is
  classified, giving the mask accuracy (mMaskAcc, seen / unseen) and the mIoU of the prediction painted into the
  masks, with and without the PSM; with a :class:`ovs.generators.MaskGenerator`, open-vocabulary inference (spec
  §8): the generator's masks are classified, fused with its own classifier (γ, ``fusion``), void-weighted and
  post-processed into semantic / panoptic / instance results (``postprocess``) for mIoU, PQ and AP;
* checkpoints hold only the trained tensors plus the hyper-parameters (the pretrained CLIP is rebuilt from its tag),
  and :meth:`MaskCLIPPP.export_clip` writes a full CLIP checkpoint that ``create_clip`` and the training-free methods
  load.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from ovs.backbones import TextClassifier, build_text_classifier, create_clip
from ovs.data.class_names import vocabulary_key
from ovs.data.transforms import short_side_size
from ovs.generators.base import MaskGenerator
from ovs.methods.maskclippp.checkpointing import MaskCLIPPPCheckpointing
from ovs.methods.maskclippp.encoders import MaskBatch, MaskEmbeddings, build_mask_encoder
from ovs.methods.maskclippp.loss import ReweightCELoss
from ovs.methods.maskclippp.evaluation import MaskCLIPPPEvaluation, paint_masks  # noqa: F401  (re-exported)
from ovs.methods.maskclippp.psm import NoPSM, SimilarityInputs, build_psm, clip_logit_scale
from ovs.methods.maskclippp.text import (  # noqa: F401  (training_label_map re-exported)
    build_templates,
    resolve_class_names,
    sample_synonyms,
    synonym_layout,
    training_label_map,
)

FINETUNE_MODES = ("auto", "all", "attention", "none")
EVAL_PSM_MODES = ("psm", "no_psm", "both")

#: Default PSM, visual LR multiplier, IGNORE_EMPTY and fine-tuning scope per architecture (spec §2.2, §2.4, §4.6).
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "convnext": {"psm": "pseudo_text", "clip_lr_multiplier": 1e-3, "ignore_empty": False, "finetune": "all"},
    "resnet": {"psm": "linear", "clip_lr_multiplier": 1e-2, "ignore_empty": True, "finetune": "all"},
    "vit": {"psm": "linear", "clip_lr_multiplier": 1e-2, "ignore_empty": True, "finetune": "attention"},
    "eva": {"psm": "linear", "clip_lr_multiplier": 1e-2, "ignore_empty": True, "finetune": "attention"},
}

#: Parameter names without weight decay besides norm layers and nn.Embedding (spec §2.3).
NO_DECAY_NAMES = (
    "positional_embedding", "class_embedding", "pos_embed", "cls_token", "mask_logit_scale",
    "absolute_pos_embed", "relative_position_bias_table",
)  # fmt: skip
NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, _BatchNorm, nn.RMSNorm)

#: Trainable visual parameters of ``finetune: attention`` per ViT family: the attention input projections (q/v for
#: EVA02, fused qkv for EVA01, in_proj weight + bias for open_clip) and the absolute position embedding (spec §2.4).
ATTENTION_PARAMETER_SUFFIXES: dict[str, tuple[str, ...]] = {
    "vit": ("attn.in_proj_weight", "attn.in_proj_bias", "positional_embedding"),
    "eva": ("attn.q_proj.weight", "attn.v_proj.weight", "attn.qkv.weight", "trunk.pos_embed"),
}


def cosine_multiplier(step: int, total_steps: int, end_ratio: float) -> float:
    """detectron2 WarmupCosineLR without warmup: 1 -> ``end_ratio`` over ``total_steps`` (spec §2.3)."""
    t = min(step, total_steps) / max(total_steps, 1)
    return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class MaskCLIPPP(MaskCLIPPPCheckpointing, MaskCLIPPPEvaluation, LightningModule):
    """MaskCLIP++ fine-tuning, GT-mask oracle evaluation and inference with a mask generator.

    Args:
        model_name: open_clip model (``convnext_base_w_320``, ``ViT-B-16``, ``EVA02-L-14-336``, ``RN50x16``, ...).
        pretrained: open_clip tag or weights file (``None``: random init, for tests).
        train_class_names: training vocabulary (class-name file or synonym lists, in label order); also the "seen"
            set of the evaluation (spec §11 Q10). ``None``: taken from the training DataModule's ``class_names``.
        templates: prompt templates (``fcclip14`` = t14, ``single`` = t1).
        psm: ``"auto"`` (pseudo-text for ConvNeXt, linear otherwise, spec §4.6), ``"pseudo_text"``, ``"linear"``
            or ``"none"`` (original CLIP similarity).
        psm_width: hidden width of the linear PSM (768).
        psm_heads: heads of the pseudo-text attention (8).
        psm_dropout: attention dropout of the pseudo-text PSM (0.1).
        linear_psm_init: ``"mean"`` (starts as the template mean, keeps the CLIP ranking) or ``"default"``
            (reference random init, quirk Q3).
        finetune: visual parameters to train: ``"auto"`` (ConvNeXt / ResNet ``all``, ViT / EVA ``attention``),
            ``"all"``, ``"attention"`` or ``"none"`` (spec §2.4).
        finetune_text: also train the attention input projections (``in_proj_weight``) of the text transformer
            ("wtext"); the text is then re-encoded every step (spec §6.3).
        mask_prior_depth: ViT blocks that carry mask tokens (3 = third-to-last insertion, spec §3.3).
        mask_logit_scale_init: initial log α (−5).
        learnable_mask_logit_scale: train log α.
        mask_threshold: fixed binarisation threshold of the downsampled masks; ``None`` = max/2 per mask.
        outside_bias: attention bias outside a mask (−100).
        mask_downsample: ``"bilinear"`` (reference) or ``"area"`` (spec §11 Q9).
        ignore_empty: drop masks that vanish on the feature grid; ``None``: True for ViT / EVA / ResNet, False for
            ConvNeXt (spec §5).
        balance_classes: class-reweighted CE (spec §5).
        temperature: CE temperature (1.0).
        lr: base learning rate (2e-4; 1e-4 for ConvNeXt-L/XXL).
        lr_end: learning rate at the last step of the cosine schedule (1e-5).
        weight_decay: AdamW weight decay (0.05), not applied to norms, embeddings and log α.
        clip_lr_multiplier: LR multiplier of pretrained visual CLIP parameters; ``None``: 1e-3 ConvNeXt, 1e-2 else.
        text_lr_multiplier: LR multiplier of the fine-tuned text parameters (1e-2).
        total_batch_size: images per optimiser step over all processes (4); the per-device batch of the DataModule
            is set to ``total / (world size × gradient accumulation)``. ``None`` keeps the DataModule's batch size.
        train_short_side: resize training images so the short side is this (``None``: keep the crop).
        test_short_side: resize evaluation images so the short side is this (``TEST_IMAGE_SIZE``; ``None``: keep).
        eval_psm: evaluate ``"psm"``, ``"no_psm"`` (original-CLIP similarity) or ``"both"`` (no-PSM metrics get the
            suffix ``_no_psm``).
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under multi-GPU DDP (ResNet; spec §11 Q8).
        text_cache_dir: optional on-disk cache of text embeddings.
        seed: seed of the per-step synonym draws and of the per-step RNG of dropout / drop-path.
        generator: frozen mask generator for evaluation (``ovs.generators``: ``Detectron2Generator``,
            ``PrecomputedMasks``, ``GroundTruthMasks``); ``None`` = GT-mask oracle (mask accuracy). Not saved in
            checkpoints.
        gamma: the paper's fusion exponent γ on the generator probabilities of its seen classes (eq. 4; code
            α = 1 − γ): 0.1 EVA-L, 0.4 ConvNeXt-B with MAFT+; 0 = no fusion (panoptic / instance protocol, §8.6).
        panoptic_on: panoptic post-processing and PQ on datasets with panoptic ground truth.
        instance_on: instance post-processing and mask AP on datasets with panoptic or instance ground truth.
        object_mask_threshold: panoptic query score threshold (0.0 FC-CLIP, 0.2 MAFT+-pan, 0.8 Mask2Former).
        overlap_threshold: panoptic overlap threshold (0.8; 0.7 MAFT+-pan).
        detections_per_image: instance top-k over queries x classes (100).
        vocabulary_match: how test and generator-vocabulary synonyms match for seen / unseen and the train -> test
            look-up table: ``"exact"`` (the reference, §8.3) or ``"normalized"`` (case, spaces, ``-`` ignored).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None = None,
        train_class_names: str | list[list[str]] | None = None,
        templates: str | list[str] = "fcclip14",
        psm: str = "auto",
        psm_width: int = 768,
        psm_heads: int = 8,
        psm_dropout: float = 0.1,
        linear_psm_init: str = "mean",
        finetune: str = "auto",
        finetune_text: bool = False,
        mask_prior_depth: int = 3,
        mask_logit_scale_init: float = -5.0,
        learnable_mask_logit_scale: bool = True,
        mask_threshold: float | None = None,
        outside_bias: float = -100.0,
        mask_downsample: str = "bilinear",
        ignore_empty: bool | None = None,
        balance_classes: bool = True,
        temperature: float = 1.0,
        lr: float = 2e-4,
        lr_end: float = 1e-5,
        weight_decay: float = 0.05,
        clip_lr_multiplier: float | None = None,
        text_lr_multiplier: float = 1e-2,
        total_batch_size: int | None = 4,
        train_short_side: int | None = None,
        test_short_side: int | None = None,
        eval_psm: str = "both",
        sync_batchnorm: bool = True,
        text_cache_dir: str | None = None,
        seed: int = 0,
        generator: MaskGenerator | None = None,
        gamma: float = 0.0,
        panoptic_on: bool = False,
        instance_on: bool = False,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        detections_per_image: int = 100,
        vocabulary_match: str = "exact",
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma (paper eq. 4) must lie in [0, 1], got {gamma}.")
        vocabulary_key("", vocabulary_match)  # validates the choice
        if detections_per_image < 1:
            raise ValueError(f"detections_per_image must be >= 1, got {detections_per_image}.")
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}.")
        if eval_psm not in EVAL_PSM_MODES:
            raise ValueError(f"eval_psm must be one of {EVAL_PSM_MODES}, got {eval_psm!r}.")
        if not 0 < lr_end <= lr:
            raise ValueError(f"Need 0 < lr_end <= lr, got lr={lr}, lr_end={lr_end}.")
        if total_batch_size is not None and total_batch_size < 1:
            raise ValueError(f"total_batch_size must be >= 1 or null, got {total_batch_size}.")
        self.save_hyperparameters(ignore=["generator"])
        object.__setattr__(self, "generator", generator)  # frozen, evaluation only: not a sub-module, not saved
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @property
    def eval_task(self) -> str:
        """Annotations ``tools/eval.py --datasets`` should load: panoptic (masks + segments) when PQ or AP is on."""
        return "panoptic" if self.hparams.panoptic_on or self.hparams.instance_on else "semantic"

    # ------------------------------------------------------------------------------------------------------------
    # configure_* hooks

    def configure_models(self) -> None:
        """CLIP, the mask encoder of its architecture, the PSM and the trainable-parameter selection (spec §2.4)."""
        hp = self.hparams
        self.clip = create_clip(hp.model_name, hp.pretrained).train()  # reference trains with the tower in train mode
        self.architecture = self.clip.architecture
        defaults = ARCHITECTURE_DEFAULTS[self.architecture]
        self.encoder = build_mask_encoder(
            self.clip,
            depth=hp.mask_prior_depth,
            logit_scale_init=hp.mask_logit_scale_init,
            learnable_scale=hp.learnable_mask_logit_scale,
            threshold=hp.mask_threshold,
            outside=hp.outside_bias,
            downsample=hp.mask_downsample,
        )
        self.psm_name = defaults["psm"] if hp.psm == "auto" else hp.psm
        num_templates = len(build_templates(hp.templates))
        self.psm = build_psm(
            self.psm_name, self.clip.embed_dim, num_templates, hp.psm_width, hp.psm_heads, hp.psm_dropout,
            hp.linear_psm_init,
        )
        if self.psm.needs_dense and not self.encoder.provides_dense:
            raise ValueError(f"The {self.psm_name} PSM needs dense patch embeddings, which the {self.architecture} "
                             "mask encoder does not provide; use psm: linear or none.")
        self.no_psm = NoPSM()
        self.logit_scale = clip_logit_scale(self.clip.model.logit_scale)  # frozen constant (spec §11 Q4)
        self.finetune = defaults["finetune"] if hp.finetune == "auto" else hp.finetune
        self.ignore_empty = defaults["ignore_empty"] if hp.ignore_empty is None else hp.ignore_empty
        self.clip_lr_multiplier = (
            defaults["clip_lr_multiplier"] if hp.clip_lr_multiplier is None else hp.clip_lr_multiplier
        )
        self._select_trainable()
        self.train_vocabulary: list[list[str]] | None = None
        if hp.train_class_names is not None:
            self.train_vocabulary = resolve_class_names(hp.train_class_names)
            hp.train_class_names = self.train_vocabulary  # checkpoints carry the names, not a path

    def configure_losses(self) -> None:
        """Class-reweighted cross-entropy (spec §5)."""
        self.criterion = ReweightCELoss(self.hparams.temperature, self.hparams.balance_classes)

    def configure_metrics(self) -> None:
        """Evaluation metrics depend on the evaluated vocabulary; they are built in :meth:`_setup_evaluation`."""
        self.eval_metrics = nn.ModuleDict()
        self.eval_classifier: TextClassifier | None = None

    def configure_model(self) -> None:
        """SyncBatchNorm for BatchNorm towers (ResNet) under multi-GPU DDP (fixes spec §11 Q8)."""
        trainer = self._trainer
        if (
            self.hparams.sync_batchnorm
            and trainer is not None
            and trainer.world_size > 1
            and trainer.strategy.root_device.type == "cuda"
            and any(isinstance(m, _BatchNorm) for m in self.clip.model.visual.modules())
        ):
            nn.SyncBatchNorm.convert_sync_batchnorm(self.clip.model.visual)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with per-group LR multipliers and weight-decay rules, cosine decay per step (spec §2.3).

        Groups: pretrained visual CLIP parameters (× ``clip_lr_multiplier``), fine-tuned text parameters
        (× ``text_lr_multiplier``) and the new parameters (PSM, log α; base LR), each split into decayed and
        non-decayed (norm layers, embeddings, position embeddings, log α; biases keep the decay, as the reference).
        """
        hp = self.hparams
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, module, parameter_name, parameter in self._trainable_parameters():
            scope = "clip_visual" if name.startswith("clip.model.visual.") else (
                "clip_text" if name.startswith("clip.") else "new")
            no_decay = isinstance(module, (*NORM_LAYERS, nn.Embedding)) or parameter_name in NO_DECAY_NAMES
            groups.setdefault((scope, no_decay), []).append(parameter)
        multipliers = {"clip_visual": self.clip_lr_multiplier, "clip_text": hp.text_lr_multiplier, "new": 1.0}
        param_groups = [
            {
                "params": params,
                "lr": hp.lr * multipliers[scope],
                "weight_decay": 0.0 if no_decay else hp.weight_decay,
                "name": f"{scope}{'_no_decay' if no_decay else ''}",
            }
            for (scope, no_decay), params in sorted(groups.items())
        ]
        optimizer = AdamW(param_groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        end_ratio = hp.lr_end / hp.lr
        scheduler = LambdaLR(optimizer, lambda step: cosine_multiplier(step, total, end_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------------------
    # trainable parameters and checkpoints

    def _select_trainable(self) -> None:
        """Set ``requires_grad`` per spec §2.4 (the rest of CLIP, including the logit scale, stays frozen)."""
        self.clip.requires_grad_(False)
        visual = self.clip.model.visual
        if self.finetune == "all":
            visual.requires_grad_(True)
        elif self.finetune == "attention":
            if self.architecture not in ATTENTION_PARAMETER_SUFFIXES:
                raise ValueError(f"finetune: attention is defined for ViT / EVA towers, not {self.architecture}.")
            suffixes = ATTENTION_PARAMETER_SUFFIXES[self.architecture]
            for name, parameter in visual.named_parameters():
                parameter.requires_grad_(name.endswith(suffixes))
        if self.hparams.finetune_text:
            for name, parameter in self.clip.model.named_parameters():
                if not name.startswith("visual.") and name.endswith("attn.in_proj_weight"):
                    parameter.requires_grad_(True)

    def _templates(self) -> tuple[str, ...]:
        return build_templates(self.hparams.templates)

    # ------------------------------------------------------------------------------------------------------------
    # set-up hooks

    def setup(self, stage: str) -> None:
        """Derive the per-device batch from ``total_batch_size`` and resolve the training vocabulary."""
        if stage != "fit":
            return
        datamodule = self.trainer.datamodule
        if self.hparams.total_batch_size is not None:
            if datamodule is None or not hasattr(datamodule, "batch_size"):
                raise ValueError(
                    "total_batch_size needs a DataModule with a `batch_size` attribute; set "
                    "model.total_batch_size: null to use the loader's own batch size."
                )
            shards = self.trainer.world_size * self.trainer.accumulate_grad_batches
            if self.hparams.total_batch_size % shards:
                raise ValueError(
                    f"total_batch_size {self.hparams.total_batch_size} is not divisible by world size "
                    f"{self.trainer.world_size} × accumulate_grad_batches {self.trainer.accumulate_grad_batches}."
                )
            datamodule.batch_size = self.hparams.total_batch_size // shards
        names = getattr(datamodule, "class_names", None)
        if self.train_vocabulary is None:
            if names is None:
                raise ValueError("train_class_names is not set and the DataModule has no `class_names`.")
            self.train_vocabulary = [list(n) for n in names]
            self.hparams.train_class_names = self.train_vocabulary
        dataset_names = self.train_vocabulary if names is None else [list(n) for n in names]
        self.register_buffer("train_label_map", training_label_map(dataset_names, self.train_vocabulary),
                             persistent=False)

    def on_fit_start(self) -> None:
        """Encode the training vocabulary once (frozen text, non-persistent buffers) or tokenize it (wtext)."""
        assert self.train_vocabulary is not None
        templates = build_templates(self.hparams.templates)
        names = [name for synonyms in self.train_vocabulary for name in synonyms]
        name_to_class = torch.tensor([c for c, s in enumerate(self.train_vocabulary) for _ in s], device=self.device)
        offsets, counts = synonym_layout(name_to_class, len(self.train_vocabulary))
        self.register_buffer("train_name_offsets", offsets, persistent=False)
        self.register_buffer("train_name_counts", counts, persistent=False)
        if self.hparams.finetune_text:
            tokens = self.clip.tokenizer([t.format(n) for n in names for t in templates])  # [Ka * T, ctx]
            self.register_buffer("train_tokens", tokens.view(len(names), len(templates), -1).to(self.device),
                                 persistent=False)
        else:
            self.register_buffer("train_text", self.encode_train_text(templates).to(self.device), persistent=False)

    def encode_train_text(self, templates: Sequence[str]) -> Tensor:
        """Frozen per-template embeddings ``[K_names, T, D]`` of every training synonym (spec §6.3), encoded once."""
        assert self.train_vocabulary is not None
        classifier = build_text_classifier(self.clip, self.train_vocabulary, templates, self.hparams.text_cache_dir)
        return classifier.per_template

    # ------------------------------------------------------------------------------------------------------------
    # forward pieces

    def prepare_batch(self, images: Sequence[Tensor], masks: Sequence[Tensor], short_side: int | None,
                      truncate_long_side: bool = True) -> MaskBatch:
        """Normalise, optionally resize (short side) and pad images and their masks (spec §3.1).

        Args:
            images: ``[3, H_b, W_b]`` RGB in ``[0, 255]`` (uint8 or float).
            masks: ``[Q_b, h_b, w_b]`` binary or soft masks of each image, any resolution (resized bilinearly to the
                image's final size).
            short_side: target short side, or ``None`` to keep each image's size.
            truncate_long_side: long side ``int(long * short_side / short)`` as the reference's evaluation resize
                (default: evaluation, GT-mask oracle and generator inference); ``False`` rounds half up (training).
        """
        if len(images) != len(masks) or not images:
            raise ValueError(f"Need one mask tensor per image, got {len(images)} images and {len(masks)} mask sets.")
        divisor = self.encoder.size_divisibility
        prepared, resized_masks, sizes = [], [], []
        for image, image_masks in zip(images, masks):
            if image.ndim != 3 or image.shape[0] != 3 or image_masks.ndim != 3:
                raise ValueError(f"Expected images [3, H, W] and masks [Q, H, W], got {tuple(image.shape)} and "
                                 f"{tuple(image_masks.shape)}.")
            height, width = image.shape[-2:]
            size = (height, width) if short_side is None else short_side_size(
                height, width, short_side, truncate=truncate_long_side)
            x = self.clip.normalize(image[None].to(self.device))  # [1, 3, H, W]
            if size != (height, width):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            m = image_masks.to(self.device, torch.float32)[None]  # [1, Q, h, w]
            if m.shape[1] == 0:
                m = m.new_zeros(1, 0, *size)
            elif tuple(m.shape[-2:]) != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            prepared.append(x[0])
            resized_masks.append(m[0])
            sizes.append(size)
        pad_h = -(-max(s[0] for s in sizes) // divisor) * divisor
        pad_w = -(-max(s[1] for s in sizes) // divisor) * divisor
        padded = torch.stack([F.pad(x, (0, pad_w - x.shape[-1], 0, pad_h - x.shape[-2])) for x in prepared])
        mask_tensor = torch.cat([F.pad(m, (0, pad_w - m.shape[-1], 0, pad_h - m.shape[-2])) for m in resized_masks])
        counts = torch.tensor([m.shape[0] for m in resized_masks], device=self.device)
        image_index = torch.repeat_interleave(torch.arange(len(images), device=self.device), counts)
        return MaskBatch(padded, mask_tensor, image_index, torch.tensor(sizes, device=self.device))

    def mask_logits(
        self, embeddings: MaskEmbeddings, image_index: Tensor, text: Tensor, psm: nn.Module | None = None
    ) -> Tensor:
        """Class logits ``[N, K']`` of mask embeddings for per-template text embeddings ``[K', T, D]`` (spec §4.2)."""
        masks = F.normalize(embeddings.embeddings.float(), dim=-1)  # [N, D]
        text = text.to(masks.dtype)
        corrs = self.logit_scale * torch.einsum("nd,ktd->nkt", masks, text)  # [N, K', T]
        inputs = SimilarityInputs(corrs, masks, text, image_index, embeddings.dense, embeddings.dense_valid)
        return (self.psm if psm is None else psm)(inputs)

    @torch.no_grad()
    def forward(
        self,
        images: Sequence[Tensor],
        masks: Sequence[Tensor],
        classifier: TextClassifier,
        use_psm: bool = True,
        short_side: int | None = None,
    ) -> list[Tensor]:
        """Classify masks: per image ``[Q_b, K]`` class logits (max over each class's synonyms, spec §6.4).

        Args:
            images: ``[3, H, W]`` RGB in ``[0, 255]``.
            masks: ``[Q_b, h, w]`` soft or binary masks per image.
            classifier: vocabulary from :func:`ovs.backbones.build_text_classifier` with this model's CLIP.
            use_psm: apply the trained PSM (else the original CLIP similarity).
            short_side: evaluation short side (default ``test_short_side``).
        """
        side = self.hparams.test_short_side if short_side is None else short_side
        batch = self.prepare_batch(images, masks, side)
        embeddings = self.encoder(batch, dense=use_psm and self.psm.needs_dense)
        logits = self.mask_logits(embeddings, batch.image_index, classifier.per_template.to(self.device),
                                  self.psm if use_psm else self.no_psm)
        merged = classifier.merge_synonyms(logits, dim=1)  # [N, K]
        return list(merged.split([m.shape[0] for m in masks]))

    # ------------------------------------------------------------------------------------------------------------
    # training

    def _step_seed(self, salt: int) -> int:
        return (self.hparams.seed * 1_000_003 + self.global_step * 7_919 + salt) % (2**63 - 1)

    @contextmanager
    def _step_rng(self) -> Iterator[None]:
        """Fork the global RNG and seed it from (seed, step, rank): dropout / drop-path draws are a function of the
        step, so a resumed run draws the same numbers (and the global RNG used by data loading is untouched)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._step_seed(1 + self.global_rank))
            yield

    def sample_train_text(self) -> Tensor:
        """Text embeddings ``[K, T, D]`` of one synonym per class drawn for this step (same on every rank)."""
        generator = torch.Generator(device=self.train_name_counts.device).manual_seed(self._step_seed(0))
        index = sample_synonyms(self.train_name_offsets, self.train_name_counts, generator)  # [K]
        if not self.hparams.finetune_text:
            return self.train_text[index]
        tokens = self.train_tokens[index]  # [K, T, ctx]
        text = self.clip.model.encode_text(tokens.flatten(0, 1))  # [K * T, D]
        return F.normalize(text.float(), dim=-1).view(*tokens.shape[:2], -1)

    def _zero_loss(self) -> Tensor:
        """0 × Σ trainable parameters: a local batch without usable masks still joins the DDP gradient all-reduce."""
        return torch.stack([p.sum() for _, _, _, p in self._trainable_parameters()]).sum() * 0.0

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> Tensor:
        """Reweighted CE of the PSM logits of every GT mask of the local batch (spec §5)."""
        labels = self.train_label_map[torch.cat(batch["mask_labels"]).to(self.device)]  # dataset -> training ids
        with self._step_rng():
            inputs = self.prepare_batch(batch["image"], batch["masks"], self.hparams.train_short_side,
                                        truncate_long_side=False)
            keep = labels >= 0  # classes outside the training vocabulary are not trained on
            loss = None
            if labels.numel():
                embeddings = self.encoder(inputs, dense=self.psm.needs_dense)
                if self.ignore_empty:
                    keep &= embeddings.areas > 0
                if bool(keep.any()):
                    logits = self.mask_logits(embeddings, inputs.image_index, self.sample_train_text())
                    loss = self.criterion(logits[keep], labels[keep], inputs.image_index[keep])
            if loss is None:
                loss = self._zero_loss()
        size = len(batch["image"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/num_masks", keep.sum().float(), batch_size=size)
        scale = getattr(self.encoder, "mask_logit_scale", None)
        if scale is not None:
            self.log("train/mask_alpha", scale.detach().exp().mean(), batch_size=size)
        return loss

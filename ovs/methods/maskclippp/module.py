"""MaskCLIP++: fine-tune CLIP for mask classification with ground-truth masks (paper §3, spec §2-§6, §9).

:class:`MaskCLIPPP` is a LightningModule (torchgeo style: ``configure_models`` / ``configure_losses`` /
``configure_metrics`` / ``configure_optimizers``):

* training: GT masks of COCO-Panoptic / COCO-Stuff crops -> mask embeddings (``encoders``) -> cosine similarities
  with frozen, precomputed text embeddings of one sampled synonym per class (or a fine-tuned text encoder) -> PSM ->
  class-reweighted CE (``loss``);
* validation / test: "GT-mask oracle" mode — every ground-truth mask is classified, giving the mask accuracy
  (mMaskAcc, seen / unseen) and the mIoU of the prediction painted into the masks, with and without the PSM;
* checkpoints hold only the trained tensors plus the hyper-parameters (the pretrained CLIP is rebuilt from its tag),
  and :meth:`MaskCLIPPP.export_clip` writes a full CLIP checkpoint that ``create_clip`` and the training-free methods
  load.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from open_clip.transformer import QuickGELU
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR

from ovs.backbones import TextClassifier, build_text_classifier, create_clip
from ovs.backbones.templates import get_templates
from ovs.data.class_names import load_class_names, normalize_name, seen_mask
from ovs.data.constants import IGNORE_INDEX
from ovs.data.transforms import sem_seg_to_masks, short_side_size
from ovs.evaluation import SemanticSegMetric
from ovs.methods.maskclippp.encoders import MaskBatch, MaskEmbeddings, build_mask_encoder
from ovs.methods.maskclippp.loss import ReweightCELoss
from ovs.methods.maskclippp.metrics import MaskAccuracy
from ovs.methods.maskclippp.psm import NoPSM, SimilarityInputs, build_psm, clip_logit_scale
from ovs.methods.maskclippp.text import sample_synonyms, synonym_layout

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


def paint_masks(masks: Tensor, classes: Tensor) -> Tensor:
    """Semantic map ``[H, W]`` with each pixel of mask q set to ``classes[q]``, ``IGNORE_INDEX`` where no mask is.

    Args:
        masks: ``bool [Q, H, W]`` (non-overlapping ground-truth masks).
        classes: ``int64 [Q]``.
    """
    if masks.shape[0] == 0:
        return torch.full(masks.shape[1:], IGNORE_INDEX, dtype=torch.int64, device=masks.device)
    covered = masks.any(dim=0)  # [H, W]
    owner = masks.to(torch.uint8).argmax(dim=0)  # [H, W]
    return torch.where(covered, classes[owner], torch.full_like(owner, IGNORE_INDEX))


class MaskCLIPPP(LightningModule):
    """MaskCLIP++ fine-tuning and GT-mask oracle evaluation.

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
    ) -> None:
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {finetune!r}.")
        if eval_psm not in EVAL_PSM_MODES:
            raise ValueError(f"eval_psm must be one of {EVAL_PSM_MODES}, got {eval_psm!r}.")
        if not 0 < lr_end <= lr:
            raise ValueError(f"Need 0 < lr_end <= lr, got lr={lr}, lr_end={lr_end}.")
        if total_batch_size is not None and total_batch_size < 1:
            raise ValueError(f"total_batch_size must be >= 1 or null, got {total_batch_size}.")
        self.save_hyperparameters()
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

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

    def _trainable_parameters(self) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
        """``(full name, owning module, local name, parameter)`` of every trainable parameter, each once."""
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if parameter.requires_grad and id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield f"{module_name}.{parameter_name}".lstrip("."), module, parameter_name, parameter

    def trained_state_keys(self) -> list[str]:
        """State-dict keys a checkpoint holds: trainable parameters and the running statistics of trained
        BatchNorm layers (ResNet ``all``)."""
        keys = [name for name, _, _, _ in self._trainable_parameters()]
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            if isinstance(module, _BatchNorm) and any(p.requires_grad for p in module.parameters()):
                for buffer_name, buffer in module.named_buffers(recurse=False):
                    if id(buffer) not in seen:
                        seen.add(id(buffer))
                        keys.append(f"{module_name}.{buffer_name}")
        return keys

    def checkpoint_state_keys(self) -> list[str]:
        """State-dict keys written to checkpoints: the trained tensors when the pretrained CLIP can be rebuilt from
        its weights, every tensor once (no aliases) for a randomly initialised CLIP (``pretrained: null``)."""
        if self.hparams.pretrained is not None:
            return self.trained_state_keys()
        seen: set[int] = set()
        keys = []
        for name, tensor in self.state_dict(keep_vars=True).items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                keys.append(name)
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only :meth:`checkpoint_state_keys` (small checkpoints) and the global torch RNG state (data order)."""
        keys = set(self.checkpoint_state_keys())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        checkpoint["maskclippp_rng"] = rng

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a full state dict, or what MaskCLIP++ checkpoints hold (:meth:`checkpoint_state_keys`).

        A partial dict must hold exactly those keys when ``strict``; the other tensors keep the pretrained CLIP
        weights the model was built with (aliases of a tensor share its storage and follow it).
        """
        if set(state_dict) == set(self.state_dict()):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        expected, found = set(self.checkpoint_state_keys()), set(state_dict)
        if strict and expected != found:
            missing, unexpected = sorted(expected - found), sorted(found - expected)
            raise ValueError(
                f"MaskCLIP++ checkpoint does not match this configuration: {len(missing)} tensors missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Build the model with "
                "the checkpoint's hyper-parameters (MaskCLIPPP.load_from_checkpoint) or a matching config."
            )
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        return type(result)(sorted(expected - found), result.unexpected_keys)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """When resuming a fit, restore the global torch RNG state (sampler shuffling and augmentations continue as
        if uninterrupted; model-side randomness is already a function of the step, see :meth:`_step_rng`)."""
        rng = checkpoint.get("maskclippp_rng")
        if rng is not None and self._trainer is not None and self._trainer.state.fn == "fit":
            torch.set_rng_state(rng["cpu"])
            if "cuda" in rng and torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda"]):
                torch.cuda.set_rng_state_all(list(rng["cuda"]))

    def export_clip(self, path: str | Path) -> Path:
        """Write the full CLIP (fine-tuned visual tower, and text tower if trained) as an ovs checkpoint.

        ``create_clip(model_name, pretrained=path)`` loads it, so every training-free method can run on the
        fine-tuned encoder.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model_name": self.hparams.model_name,
            "base_pretrained": self.hparams.pretrained,
            "source": "maskclippp",
            "quick_gelu": any(isinstance(m, QuickGELU) for m in self.clip.model.modules()),
            "mean": [float(v) / 255.0 for v in self.clip.pixel_mean.flatten()],
            "std": [float(v) / 255.0 for v in self.clip.pixel_std.flatten()],
        }
        state = {k: v.detach().cpu().clone() for k, v in self.clip.model.state_dict().items()}
        torch.save({"state_dict": state, "ovs_meta": meta}, path)
        return path

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

    def prepare_batch(self, images: Sequence[Tensor], masks: Sequence[Tensor], short_side: int | None) -> MaskBatch:
        """Normalise, optionally resize (short side) and pad images and their masks (spec §3.1).

        Args:
            images: ``[3, H_b, W_b]`` RGB in ``[0, 255]`` (uint8 or float).
            masks: ``[Q_b, h_b, w_b]`` binary or soft masks of each image, any resolution (resized bilinearly to the
                image's final size).
            short_side: target short side, or ``None`` to keep each image's size.
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
            size = (height, width) if short_side is None else short_side_size(height, width, short_side)
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
            inputs = self.prepare_batch(batch["image"], batch["masks"], self.hparams.train_short_side)
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

    # ------------------------------------------------------------------------------------------------------------
    # GT-mask oracle evaluation (spec §9)

    def _eval_vocabulary(self, stage: str) -> tuple[list[list[str]], str, Tensor | None]:
        """Class names, mIoU convention and seen-class mask of the evaluated dataset.

        Seen classes: the DataModule's ``seen`` (its ``seen_vocabulary``, e.g. a mask generator's training set, spec
        §11 Q10) when it defines one, else the classes sharing a synonym with the training vocabulary.
        """
        datamodule = self.trainer.datamodule
        source: Any = datamodule
        if datamodule is None or not hasattr(datamodule, "class_names"):
            loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            source = getattr(loader, "dataset", None)
        names = getattr(source, "class_names", None)
        if names is None:
            raise ValueError("GT-mask evaluation needs the dataset's `class_names` (DataModule or Dataset attribute).")
        names = [list(n) for n in names]
        seen = getattr(source, "seen", None)
        if seen is None and self.train_vocabulary is not None:
            seen = seen_mask(names, self.train_vocabulary)
        return names, getattr(source, "miou_convention", "detectron2"), seen

    def _setup_evaluation(self, stage: str) -> None:
        names, convention, seen = self._eval_vocabulary(stage)
        templates = build_templates(self.hparams.templates)
        self.eval_classifier = build_text_classifier(self.clip, names, templates, self.hparams.text_cache_dir)
        variants = list(self._eval_psms())
        self.eval_metrics = nn.ModuleDict({
            f"acc{suffix}": MaskAccuracy(len(names), seen) for suffix in variants
        } | {
            f"sem{suffix}": SemanticSegMetric(len(names), convention, IGNORE_INDEX, seen) for suffix in variants
        }).to(self.device)

    def _eval_psms(self) -> dict[str, nn.Module]:
        """Suffix -> similarity model evaluated under it."""
        mode = self.hparams.eval_psm
        if mode == "psm":
            return {"": self.psm}
        if mode == "no_psm":
            return {"": self.no_psm}
        return {"": self.psm, "_no_psm": self.no_psm}

    def _oracle_step(self, batch: dict[str, list[Any]]) -> None:
        """Classify every GT mask (the dataset's ``masks``, else one per class of ``sem_seg``), update the mask
        accuracy and the mIoU of the prediction painted into the masks (pixels outside every mask are ignored)."""
        assert self.eval_classifier is not None
        k = self.eval_classifier.num_classes
        if "masks" in batch:
            masks = [m.to(self.device).bool() for m in batch["masks"]]
            labels = [lab.to(self.device) for lab in batch["mask_labels"]]
        else:
            pairs = [sem_seg_to_masks(s.to(self.device), k) for s in batch["sem_seg"]]
            masks, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        inputs = self.prepare_batch(batch["image"], masks, self.hparams.test_short_side)
        psms = self._eval_psms()
        dense = any(p.needs_dense for p in psms.values())
        embeddings = self.encoder(inputs, dense=dense) if inputs.masks.numel() else None
        text = self.eval_classifier.per_template.to(self.device)
        for suffix, psm in psms.items():
            if embeddings is None:
                predictions = torch.zeros(0, dtype=torch.int64, device=self.device)
            else:
                logits = self.mask_logits(embeddings, inputs.image_index, text, psm)  # [N, K_names]
                predictions = self.eval_classifier.merge_synonyms(logits, dim=1).argmax(dim=1)  # [N]
            self.eval_metrics[f"acc{suffix}"].update(predictions, torch.cat(labels))
            per_image = predictions.split([m.shape[0] for m in masks])
            for image_masks, classes, target in zip(masks, per_image, batch["sem_seg"]):
                painted = paint_masks(image_masks, classes)
                target = torch.where(image_masks.any(dim=0), target.to(self.device), IGNORE_INDEX)
                self.eval_metrics[f"sem{suffix}"].update(painted, target)

    def _log_evaluation(self, stage: str) -> None:
        for suffix in self._eval_psms():
            values = self.eval_metrics[f"acc{suffix}"].compute() | {
                k: v for k, v in self.eval_metrics[f"sem{suffix}"].compute().items()
                if k in ("mIoU", "mIoU_seen", "mIoU_unseen")
            }
            for name, value in values.items():
                self.log(f"{stage}/{name}{suffix}", value.float())
            self.eval_metrics[f"acc{suffix}"].reset()
            self.eval_metrics[f"sem{suffix}"].reset()

    def on_validation_start(self) -> None:
        self._setup_evaluation("val")

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._oracle_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_start(self) -> None:
        self._setup_evaluation("test")

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._oracle_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")


def training_label_map(dataset_names: Sequence[Sequence[str]], train_names: Sequence[Sequence[str]]) -> Tensor:
    """``int64 [K_dataset]``: training-vocabulary index of each dataset class, −1 for classes outside it.

    Classes match by their normalised display name (first synonym), so the training vocabulary may be a subset of
    the dataset's classes (e.g. the seen classes of the synthetic benchmark) or the same classes with other synonyms.

    Raises:
        ValueError: when a training class is not a dataset class.
    """
    index = {normalize_name(names[0]): i for i, names in enumerate(train_names)}
    mapping = [index.get(normalize_name(names[0]), -1) for names in dataset_names]
    missing = sorted(set(index) - {normalize_name(names[0]) for names in dataset_names})
    if missing:
        raise ValueError(
            f"{len(missing)} training classes are not classes of the training dataset (e.g. {missing[:3]}); "
            "train_class_names must list dataset classes (matched by their first name)."
        )
    return torch.tensor(mapping, dtype=torch.int64)


def build_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Resolve a template-set name or list (``fcclip14`` = t14, ``single`` = t1)."""
    return get_templates(templates if isinstance(templates, str) else list(templates))


def resolve_class_names(names: str | Sequence[Sequence[str]]) -> list[list[str]]:
    """A class-name file name / path or explicit synonym lists -> ``list[list[str]]``."""
    return load_class_names(names) if isinstance(names, str) else [list(n) for n in names]

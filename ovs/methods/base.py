"""The eval-only dense segmenter base class: the Segmenter contract of docs/architecture.md.

A :class:`DenseSegmenter` holds a CLIP ViT, a :class:`~ovs.backbones.ViTPolicy` (the method), a text-classifier
cache and the inference protocol (:class:`~ovs.inference.InferenceConfig`: method defaults, then the config's
``inference`` section, then its per-dataset ``protocols`` entry). One pipeline serves ``tools/eval.py``
(``test_step``), the Python API (:meth:`segment`) and the synthetic demo:

resize (spec §9.1) -> normalise -> batched slide / whole-image windows through one hooked ViT forward each (spec §2.3)
-> canvas average -> bilinear to the label size -> optional PAMR (spec §9.5) -> post-processing (spec §2.4).

Subclasses define :meth:`build_policy` and, if they change how tokens meet text (CLIP Surgery), :meth:`similarity`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from ovs.backbones import CLIP, TextClassifier, ViTDenseOutput, ViTPolicy, build_text_classifier, create_clip
from ovs.backbones.vit import POS_EMBED_MODES
from ovs.data import IGNORE_INDEX, load_class_names
from ovs.data.transforms import resize_image
from ovs.evaluation import SemanticSegMetric, log_overlay, log_per_class_iou_table, make_palette
from ovs.evaluation.semantic import CONVENTIONS
from ovs.inference import (
    InferenceConfig,
    PostProcessed,
    minmax_normalize,
    pamr,
    postprocess,
    resize_for_inference,
    resize_logits,
    slide_inference,
)

logger = logging.getLogger(__name__)

#: Scalars logged per dataset at the end of ``trainer.test`` (seen / unseen only with a seen mask).
TEST_METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "pAcc", "mAcc", "fwIoU")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Vocabulary:
    """The classes being segmented and their text classifier.

    Attributes:
        class_names: synonyms per dataset class.
        background_index: dataset class id of the background, or ``None``.
        classifier: text classifier over all classes, or over the foreground classes (``foreground_only``).
        class_ids: ``int64 [K']`` dataset class id of every classifier class when the background was dropped.
    """

    class_names: list[list[str]]
    background_index: int | None
    classifier: TextClassifier
    class_ids: Tensor | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def normalize_class_names(class_names: str | Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """Vocabulary from a class-file name / path, a list of ``"name, synonym"`` strings or a list of synonym lists."""
    if isinstance(class_names, str):
        return load_class_names(class_names)
    if not class_names:
        raise ValueError("class_names must not be empty.")
    classes = []
    for entry in class_names:
        names = [n.strip() for n in entry.split(",")] if isinstance(entry, str) else [str(n).strip() for n in entry]
        if not names or any(not n for n in names):
            raise ValueError(f"Every class needs non-empty names; got {entry!r}.")
        classes.append(names)
    return classes


def select_classes(classifier: TextClassifier, class_ids: Tensor) -> TextClassifier:
    """The classifier restricted to ``class_ids`` (in that order), names and synonyms kept (GEM's foreground-only
    classifier, spec §3.4)."""
    position = torch.full((classifier.num_classes,), -1, dtype=torch.long, device=class_ids.device)
    position[class_ids] = torch.arange(len(class_ids), device=class_ids.device)
    new_class = position[classifier.name_to_class.to(class_ids.device)]  # [K_names], -1 = dropped
    keep = new_class >= 0
    return TextClassifier(
        classifier.embeddings[keep.to(classifier.embeddings.device)],
        classifier.per_template[keep.to(classifier.per_template.device)],
        new_class[keep].to(classifier.name_to_class.device),
        [classifier.class_names[c] for c in class_ids.tolist()],
        classifier.templates,
    )


def eval_datamodule(module: LightningModule) -> Any:
    """The DataModule ``module`` is tested on, checked to expose ``name``, ``class_names`` and ``background_index``
    (every ovs.data DataModule does): eval-only methods read the vocabulary and protocol from it."""
    datamodule = getattr(module.trainer, "datamodule", None)
    missing = [a for a in ("name", "class_names", "background_index") if not hasattr(datamodule, a)]
    if datamodule is None or missing:
        raise RuntimeError(
            f"{type(module).__name__} is tested through a DataModule exposing name, class_names and "
            f"background_index (ovs.data); got {type(datamodule).__name__} missing {missing}."
        )
    return datamodule


def log_test_overlays(module: Any, images: list[Tensor], predictions: list[Tensor], targets: list[Tensor]) -> None:
    """Log image / prediction / label overlays of an eval-only method to TensorBoard (rank 0), at most
    ``module.num_overlays`` per dataset (``module._overlays_logged`` counts them; ``module._palette`` colours them)."""
    writer = getattr(module.logger, "experiment", None)
    if module.global_rank != 0 or not hasattr(writer, "add_image") or module._palette is None:
        return
    for image, prediction, target in zip(images, predictions, targets):
        if module._overlays_logged >= module.num_overlays:
            return
        image = resize_image(image.detach().cpu().to(torch.uint8), tuple(target.shape[-2:]))
        log_overlay(writer, f"test/{module.dataset_name}/overlay_{module._overlays_logged}", image,
                    prediction.cpu(), target.cpu(), module._palette)
        module._overlays_logged += 1


class DenseSegmenter(LightningModule):
    """Eval-only open-vocabulary semantic segmentation with a hooked CLIP ViT (training-free spec §1-§9).

    Args:
        model_name: open_clip model name (any ViT: ``ViT-B-16``, ``ViT-B-32``, ``ViT-L-14``, ``ViT-B-16-quickgelu``
            for MetaCLIP, ``ovs-toy-vit`` ...).
        pretrained: open_clip tag (offline cache), a checkpoint path (open_clip / OpenAI / ovs, e.g. a MaskCLIP++
            export), or ``None`` for random weights.
        force_quick_gelu: force the activation (``None`` follows the tag).
        inference: overrides of the method's default :class:`~ovs.inference.InferenceConfig` fields.
        protocols: per-dataset overrides ``{dataset_name: {field: value}}`` applied on top of ``inference`` when
            that dataset is tested (spec §2.5 tables).
        miou_convention: mIoU convention of the metric (``mmseg`` for these methods, spec §9.6); ``None`` takes
            the DataModule's.
        num_overlays: prediction overlays logged to TensorBoard per dataset.
        text_cache_dir: optional on-disk text-embedding cache.
        pos_embed: positional-embedding interpolation (``dino``, ``timm``, ``bilinear``, ``bicubic_corners``);
            ``None`` = the method's variant (spec §1.1).
        strict_weights: require every model key in the checkpoint (``False`` for visual-only files).
        clip: an already-built :class:`~ovs.backbones.CLIP` to use instead of creating one (Python API, tests);
            ``model_name`` / ``pretrained`` are then only recorded.
    """

    #: Method defaults over :class:`InferenceConfig` (the method's released protocol).
    default_inference: ClassVar[dict[str, Any]] = {}
    #: Positional-embedding variant of the method (spec §1.1).
    default_pos_embed: ClassVar[str] = "dino"

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        force_quick_gelu: bool | None = None,
        inference: dict[str, Any] | None = None,
        protocols: dict[str, dict[str, Any]] | None = None,
        miou_convention: str | None = "mmseg",
        num_overlays: int = 4,
        text_cache_dir: str | None = None,
        pos_embed: str | None = None,
        strict_weights: bool = True,
        clip: CLIP | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["clip"])
        if num_overlays < 0:
            raise ValueError(f"num_overlays must be >= 0, got {num_overlays}.")
        if miou_convention not in (*CONVENTIONS, None):
            raise ValueError(f"miou_convention must be one of {CONVENTIONS} or None, got {miou_convention!r}.")
        if pos_embed is not None and pos_embed not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_MODES} or None, got {pos_embed!r}.")
        if clip is None:
            clip = create_clip(model_name, pretrained, force_quick_gelu=force_quick_gelu, strict=strict_weights)
            clip.requires_grad_(False)
        if clip.architecture != "vit":
            raise ValueError(
                f"{type(self).__name__} modifies ViT attention blocks; '{clip.model_name}' is a {clip.architecture} "
                "model. Use an open_clip ViT (ViT-B-32, ViT-B-16, ViT-L-14, ...)."
            )
        self.clip = clip
        self.base_config = InferenceConfig().updated(self.method_inference_defaults()).updated(inference)
        self.protocols = {str(name): dict(overrides) for name, overrides in (protocols or {}).items()}
        for name, overrides in self.protocols.items():
            try:
                self.base_config.updated(overrides)
            except ValueError as err:
                raise ValueError(f"Protocol for dataset {name!r}: {err}") from err
        self.config = self.base_config
        self.pos_embed = pos_embed or self.default_pos_embed
        self.miou_convention = miou_convention
        self.num_overlays = num_overlays
        self.text_cache_dir = text_cache_dir
        self.policy = self.build_policy()
        self._class_names: list[list[str]] | None = None
        self._fixed_classifier: TextClassifier | None = None
        self._background_index: int | None = None
        self._vocabulary: Vocabulary | None = None
        self._vocabulary_key: tuple[Any, ...] | None = None
        self.metric: SemanticSegMetric | None = None
        self.dataset_name: str | None = None
        self._overlays_logged = 0
        self._palette: Tensor | None = None
        self.test_per_class: dict[str, list[Any]] | None = None
        """Per-class IoU (%) of the last tested dataset, ``{"class": [...], "IoU": [...]}`` (``per_class_iou.csv``)."""

    # ------------------------------------------------------------------------------------------------------------
    # What a method defines

    def method_inference_defaults(self) -> dict[str, Any]:
        """The method's protocol defaults (class attribute ``default_inference`` unless a method computes them)."""
        return dict(self.default_inference)

    def build_policy(self) -> ViTPolicy:
        """The method's modified ViT forward; the base class runs the pretrained one (vanilla CLIP, spec §1.3)."""
        return ViTPolicy(pos_embed=self.pos_embed)

    def similarity(self, output: ViTDenseOutput, text: Tensor) -> Tensor:
        """Cosine similarity of L2-normalised patch tokens with the text embeddings: ``[B, N, K_names]``."""
        return F.normalize(output.patch_tokens.float(), dim=-1) @ text.T

    # ------------------------------------------------------------------------------------------------------------
    # Protocol and vocabulary

    @property
    def patch_size(self) -> int:
        return self.clip.dense.patch_size[0]

    def configure_protocol(self, dataset: str | None = None, **overrides: Any) -> InferenceConfig:
        """Select the protocol: method defaults + ``inference`` + ``protocols[dataset]`` + ``overrides``."""
        config = self.base_config
        if dataset is not None:
            if dataset in self.protocols:
                config = config.updated(self.protocols[dataset])
            elif self.protocols:
                logger.info("%s: no protocol for dataset %r; using the base inference settings.",
                            type(self).__name__, dataset)
        self.config = config.updated(overrides)
        return self.config

    def set_vocabulary(self, class_names: str | Sequence[str] | Sequence[Sequence[str]],
                       background_index: int | None = None, classifier: TextClassifier | None = None) -> None:
        """Classes to segment (synonyms allowed) and the background class id, if any.

        Args:
            classifier: precomputed text classifier over exactly these classes (e.g. cached or custom embeddings);
                ``None`` encodes the names with the protocol's templates.
        """
        names = normalize_class_names(class_names)
        if background_index is not None and not 0 <= background_index < len(names):
            raise ValueError(f"background_index {background_index} is outside 0..{len(names) - 1}.")
        if classifier is not None and classifier.num_classes != len(names):
            raise ValueError(f"The classifier has {classifier.num_classes} classes for {len(names)} class names.")
        self._class_names, self._background_index = names, background_index
        self._fixed_classifier = classifier
        self._vocabulary = None

    @property
    def vocabulary(self) -> Vocabulary:
        """The text classifier for the current classes and protocol (templates, foreground_only), cached."""
        if self._class_names is None:
            raise RuntimeError(f"{type(self).__name__}: call set_vocabulary(class_names) before segmenting.")
        device = self.clip.pixel_mean.device
        key = (self.config.templates, self.config.foreground_only, str(device))
        if self._vocabulary is None or self._vocabulary_key != key:
            names, background = self._class_names, self._background_index
            classifier = self._fixed_classifier
            if classifier is None:
                classifier = build_text_classifier(self.clip, names, self.config.templates, self.text_cache_dir)
            classifier = classifier.to(device)
            class_ids = None
            if self.config.foreground_only and background is not None:
                class_ids = torch.tensor([c for c in range(len(names)) if c != background], device=device)
                classifier = select_classes(classifier, class_ids)
            self._vocabulary = Vocabulary(names, background, classifier, class_ids)
            self._vocabulary_key = key
        return self._vocabulary

    # ------------------------------------------------------------------------------------------------------------
    # Inference

    def autocast(self) -> AbstractContextManager[Any]:
        """Backbone autocast: ``precision`` on CUDA (bf16 default, spec §9.2 uses fp16), ``cpu_precision`` on CPU
        (fp32 default); other devices run fp32."""
        device = self.clip.pixel_mean.device
        if device.type == "cuda" and self.config.precision != "fp32":
            return torch.autocast("cuda", dtype=_AUTOCAST_DTYPES[self.config.precision])
        if device.type == "cpu" and self.config.cpu_precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def encode_windows(self, windows: Tensor) -> Tensor:
        """Per-name logits of normalised windows: ``[N, 3, h, w] -> [N, K_names, h, w]`` (spec §2.3: cosine on the
        patch grid, bilinear to the window size)."""
        text = self.vocabulary.classifier.embeddings  # [K_names, D]
        with self.autocast():
            output = self.clip.dense.forward_dense(windows, self.policy)
        similarity = self.similarity(output, text.float())  # [N, g_h * g_w, K_names]
        n, _, k = similarity.shape
        logits = similarity.transpose(1, 2).reshape(n, k, *output.grid)  # [N, K_names, g_h, g_w]
        if self.config.score == "minmax" and self.config.minmax_order == "grid_first":
            logits = minmax_normalize(logits)  # per window and name on the patch grid (CLIP Surgery)
        return resize_logits(logits, windows.shape[-2:])

    @staticmethod
    def _image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
        if isinstance(images, Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"Expected images [B, 3, H, W] in [0, 255], got shape {tuple(images.shape)}.")
            return list(images)
        batch = list(images)
        if not batch or any(not isinstance(i, Tensor) or i.ndim != 3 or i.shape[0] != 3 for i in batch):
            raise ValueError("Expected a non-empty list of RGB images [3, H, W] in [0, 255].")
        return batch

    @torch.inference_mode()
    def dense_logits(self, images: Sequence[Tensor], output_sizes: Sequence[tuple[int, int]],
                     normalized: bool = False) -> list[Tensor]:
        """Raw per-name cosine logits ``[K_names, H_out, W_out]`` per image (spec §2.3, §9.5): resize, normalise,
        batched windows, canvas average, bilinear to ``output_sizes``, optional PAMR.

        ``normalized=True`` takes images already normalised with the CLIP's mean / std (float ``[3, H, W]``, e.g.
        the exact tensor fed to another implementation): they are resized (bilinear, no ``uint8`` rounding) but not
        normalised again."""
        config = self.config
        device = self.clip.pixel_mean.device
        normalised = []
        for image in images:
            if normalized and not image.is_floating_point():
                raise ValueError("normalized=True expects float images normalised with the CLIP mean / std, got "
                                 f"{image.dtype}; pass normalized=False for images in [0, 255].")
            resized = resize_for_inference(image.to(device), config.resize, config.size, config.max_long_side)
            normalised.append(resized.float() if normalized else self.clip.normalize(resized[None])[0])  # [3, h, w]
        pad_multiple = self.patch_size if config.pad_to_patch else 0
        canvases = slide_inference(normalised, self.encode_windows, config.slide_crop, config.slide_stride,
                                   config.window_batch, pad_multiple)
        outputs = []
        for image, canvas, size in zip(normalised, canvases, output_sizes):
            logits = resize_logits(canvas, tuple(size))  # [K_names, H, W]
            if config.pamr_steps:
                guide = resize_logits(image, tuple(size))  # the normalised image at the output size
                logits = pamr(guide[None], logits[None], config.pamr_steps, config.pamr_dilations)[0]
            outputs.append(logits)
        return outputs

    def segment(self, images: Tensor | Sequence[Tensor],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[PostProcessed]:
        """Class scores and label maps of RGB images in ``[0, 255]`` (``[B, 3, H, W]`` or a list of ``[3, H, W]``),
        at ``output_sizes`` (default: each input size)."""
        batch = self._image_list(images)
        sizes = [tuple(i.shape[-2:]) for i in batch] if output_sizes is None else [tuple(s) for s in output_sizes]
        if len(sizes) != len(batch):
            raise ValueError(f"Got {len(sizes)} output sizes for {len(batch)} images.")
        vocabulary = self.vocabulary
        with torch.inference_mode():
            return [
                postprocess(logits, vocabulary.classifier, self.config, vocabulary.background_index,
                            vocabulary.class_ids, vocabulary.num_classes)
                for logits in self.dense_logits(batch, sizes)
            ]

    def forward(self, images: Tensor | Sequence[Tensor],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> Tensor | list[Tensor]:
        """Per-class scores at the label resolution: ``[B, K, H, W]`` for a batch tensor, a list of ``[K, H, W]``
        for a list of images (sizes may differ). See :class:`~ovs.inference.PostProcessed` for their meaning."""
        scores = [result.scores for result in self.segment(images, output_sizes)]
        if isinstance(images, Tensor):
            if len({tuple(s.shape) for s in scores}) != 1:
                raise ValueError("A batch tensor needs one output size for all images; pass a list of images instead.")
            return torch.stack(scores)
        return scores

    # ------------------------------------------------------------------------------------------------------------
    # Lightning test loop

    def on_test_start(self) -> None:
        """Read the dataset (name, classes, background, seen mask) and select its protocol and metric."""
        datamodule = eval_datamodule(self)
        self.dataset_name = str(datamodule.name)
        config = self.configure_protocol(self.dataset_name)
        class_names = datamodule.class_names
        if config.class_names is not None:
            class_names = load_class_names(config.class_names)
            if len(class_names) != len(datamodule.class_names):
                raise ValueError(
                    f"Protocol class_names {config.class_names!r} lists {len(class_names)} classes; dataset "
                    f"{self.dataset_name!r} has {len(datamodule.class_names)}."
                )
        self.set_vocabulary(class_names, datamodule.background_index)
        seen = getattr(datamodule, "seen", None)
        convention = self.miou_convention or getattr(datamodule, "miou_convention", "mmseg")
        self.metric = SemanticSegMetric(len(class_names), convention, IGNORE_INDEX, seen).to(self.device)
        self._palette = make_palette(len(class_names))
        self._overlays_logged = 0

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Predict at the label resolution, update the metric, log the first overlays."""
        if self.metric is None:
            raise RuntimeError("on_test_start did not run: test this module with trainer.test(model, datamodule=...).")
        targets = list(batch["sem_seg"])
        results = self.segment(list(batch["image"]), [tuple(t.shape[-2:]) for t in targets])
        predictions = [r.labels for r in results]
        self.metric.update(predictions, targets)
        self._log_overlays(list(batch["image"]), predictions, targets)

    def on_test_epoch_end(self) -> None:
        """Log ``test/<metric>`` scalars and the per-class IoU table of the dataset; keep the per-class IoU in
        :attr:`test_per_class`."""
        if self.metric is None:
            return
        values = self.metric.compute()
        self.log_dict({f"test/{name}": float(values[name]) for name in TEST_METRICS if name in values})
        if self._class_names is not None:
            self.test_per_class = {"class": [names[0] for names in self._class_names], "IoU": values["IoU"].tolist()}
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(writer, "add_text") and self._class_names is not None:
            log_per_class_iou_table(writer, [names[0] for names in self._class_names], values["IoU"].cpu(),
                                    tag=f"test/{self.dataset_name}/per_class_iou")
        self.metric.reset()

    def _log_overlays(self, images: list[Tensor], predictions: list[Tensor], targets: list[Tensor]) -> None:
        log_test_overlays(self, images, predictions, targets)

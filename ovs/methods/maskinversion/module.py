"""Class retrieval from ground-truth masks for MaskInversion and the baselines in one harness (paper §4.1 (b), App. B;
maskinversion spec §4 (b), §11).

Each query mask (the sample's ``masks`` when it has them, else one per class region of ``sem_seg``) is
embedded by every configured region embedder and matched against the text embeddings of **all** dataset classes
(template ``a photo of a {}.`` by default, max over synonyms). Logged per embedder ``E``: ``test/E/Acc@1``,
``Acc@5``, ``Acc@10``, the class-balanced ``mAcc@1`` and, where the DataModule defines ``seen`` classes (the
synthetic benchmark), ``mask_acc`` / ``mask_acc_seen`` / ``mask_acc_unseen``, plus the mIoU (seen / unseen) of the
predicted classes painted into the masks — the numbers MaskCLIP++'s GT-mask oracle reports, on identical masks.
MaskInversion also logs its mean final Dice loss and seconds per image.

With a ``generator`` (any :class:`ovs.generators.MaskGenerator`, set in the config like MaskCLIP++'s) the module is
a **mask classifier** (issue 14 item 6): each image's generator masks (soft, ``[Q, H, W]``) are embedded by every
embedder (MaskInversion fits its tokens to the soft masks; the baselines take ``mask ≥ 0.5``), scored against the
text classifier as ``logit_scale · cos`` and painted exactly as MaskCLIP++ without fusion,
:func:`ovs.methods.maskclippp.postprocess.semantic_inference` (``sem[k] = Σ_q softmax_q[k] · mask_q``, argmax), and
``test/E/mIoU`` (``_seen`` / ``_unseen``) is logged against the full ``sem_seg``. With
:class:`ovs.generators.GroundTruthMasks` this equals the GT-oracle painted mIoU.

MaskInversion needs autograd at test time: the trainer must run with ``inference_mode: false`` (the configs set it);
otherwise ``test_step`` raises an error that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn

from ovs.backbones import TextClassifier, build_text_classifier, create_clip
from ovs.data.constants import IGNORE_INDEX
from ovs.data.transforms import sem_seg_to_masks
from ovs.evaluation import RegionAccuracy, SemanticSegMetric
from ovs.generators.base import MaskGenerator, resize_masks
from ovs.methods.maskclippp.postprocess import semantic_inference
from ovs.methods.maskclippp.metrics import MaskAccuracy
from ovs.methods.maskinversion.baselines import EMBEDDERS, MaskInversionEmbedder, RegionEmbedder, build_embedder
from ovs.methods.maskinversion.inversion import InversionConfig

QUERY_UNITS = ("auto", "semantic", "instance")
SEMANTIC_KEYS = ("mIoU", "mIoU_seen", "mIoU_unseen")


def paint_masks(masks: Tensor, classes: Tensor) -> Tensor:
    """Semantic map ``int64 [H, W]``: each pixel of mask ``q`` (``bool [Q, H, W]``, non-overlapping) gets
    ``classes[q]``, :data:`IGNORE_INDEX` where no mask is (the GT-mask oracle's painted prediction)."""
    covered = masks.any(dim=0)  # [H, W]
    owner = masks.to(torch.uint8).argmax(dim=0)  # [H, W]
    return torch.where(covered, classes[owner], IGNORE_INDEX)


class RegionRetrieval(LightningModule):
    """Class retrieval with ground-truth query masks (no trainable parameters; spec §11).

    Args:
        model_name: open_clip ViT (``ViT-B-16``, ``ViT-L-14``, ...).
        pretrained: open_clip tag or weights file (``None``: random, for tests).
        force_quick_gelu: override open_clip's QuickGELU choice.
        embedders: any of ``maskinversion``, ``cls``, ``crop``, ``masked_crop``, ``red_circle``, ``fgvp``.
        iterations, lr, alpha, image_size, grad_mode, optimization: MaskInversion settings
            (:class:`~ovs.methods.maskinversion.InversionConfig`).
        baseline_options: keyword arguments of :class:`~ovs.methods.maskinversion.baselines.BaselineEmbedder`
            (``crop_expand``, ``fill``, ``masked_full_image``, ``thickness``, ``blur_radius``).
        templates: prompt templates (``single`` = "a photo of a {}.").
        query_unit: ``semantic`` (one mask per class region of ``sem_seg``), ``instance`` (the sample's ``masks``
            and ``mask_labels``) or ``auto`` (``masks`` when the sample has them, as MaskCLIP++'s oracle).
        ks: the k of Acc@k.
        generator: frozen mask generator (``ovs.generators``); ``None`` queries the ground-truth masks (class
            retrieval). Not saved with the hyper-parameters.
        logit_scale: temperature of the generator path's per-mask softmax (CLIP's trained 100 by default).
        things_only: restrict queries, vocabulary and mIoU to the DataModule's thing classes (``is_thing``): COCO
            instance retrieval over the 80 things from the COCO-Panoptic val segments (paper §4.1 (b)).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = "openai",
        force_quick_gelu: bool | None = None,
        embedders: Sequence[str] = EMBEDDERS,
        iterations: int = 10,
        lr: float = 0.1,
        alpha: float = 0.0,
        image_size: int | tuple[int, int] = 448,
        grad_mode: str = "auto",
        optimization: str = "joint",
        baseline_options: dict[str, Any] | None = None,
        templates: str | list[str] = "single",
        query_unit: str = "auto",
        ks: Sequence[int] = (1, 5, 10),
        generator: MaskGenerator | None = None,
        logit_scale: float = 100.0,
        things_only: bool = False,
    ) -> None:
        super().__init__()
        unknown = [e for e in embedders if e not in EMBEDDERS]
        if unknown or not embedders:
            raise ValueError(f"Unknown embedders {unknown}; choose from {EMBEDDERS}.")
        if query_unit not in QUERY_UNITS:
            raise ValueError(f"query_unit must be one of {QUERY_UNITS}, got {query_unit!r}.")
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}.")
        self.save_hyperparameters(ignore=["generator"])
        object.__setattr__(self, "generator", generator)  # frozen, evaluation only: not a sub-module, not saved
        clip = create_clip(model_name, pretrained, force_quick_gelu=force_quick_gelu)
        clip.requires_grad_(False)
        self.clip = clip.eval()
        self.config = InversionConfig(
            iterations=iterations, lr=lr, alpha=alpha,
            image_size=image_size if isinstance(image_size, int) else tuple(image_size),  # type: ignore[arg-type]
            grad_mode=grad_mode, optimization=optimization,
        )
        self.embedder_names = tuple(embedders)
        self.baseline_options = dict(baseline_options or {})
        self.classifier: TextClassifier | None = None
        self.class_map: Tensor | None = None  # int64 [K_dataset]: dataset class -> vocabulary index, -1 = not queried
        self.metrics = nn.ModuleDict()

    def train(self, mode: bool = True) -> RegionRetrieval:
        """The CLIP stays in eval mode (no dropout) whatever Lightning asks."""
        super().train(mode)
        self.clip.eval()
        return self

    def embedders(self) -> dict[str, RegionEmbedder]:
        return {
            name: build_embedder(self.clip, name, self.config, **({} if name == "maskinversion" else
                                                                 self.baseline_options))
            for name in self.embedder_names
        }

    def _vocabulary(self) -> tuple[list[list[str]], Tensor | None, str]:
        datamodule = self.trainer.datamodule
        source: Any = datamodule
        if datamodule is None or not hasattr(datamodule, "class_names"):
            loaders = self.trainer.test_dataloaders
            source = getattr(loaders[0] if isinstance(loaders, (list, tuple)) else loaders, "dataset", None)
        names = getattr(source, "class_names", None)
        if names is None:
            raise ValueError("Class retrieval needs the dataset's `class_names` (DataModule or Dataset attribute).")
        names = [list(n) for n in names]
        seen, convention = getattr(source, "seen", None), getattr(source, "miou_convention", "detectron2")
        if not self.hparams.things_only:
            return names, seen, convention
        is_thing = getattr(datamodule, "is_thing", None)
        if is_thing is None:
            raise ValueError("things_only needs a DataModule with `is_thing` (e.g. ovs.data.COCOPanopticDataModule).")
        thing = torch.as_tensor(list(is_thing), dtype=torch.bool)  # [K_dataset]
        self.class_map = torch.where(thing, thing.long().cumsum(0) - 1, -1).to(self.device)
        names = [n for n, keep in zip(names, thing.tolist()) if keep]
        if seen is not None:
            seen = torch.as_tensor(seen)
            seen = seen[thing.to(seen.device)]  # [K_things]
        return names, seen, convention

    def to_vocabulary(self, labels: Tensor) -> Tensor:
        """Dataset class ids (any shape, negative = ignore) as vocabulary indices; :data:`IGNORE_INDEX` for classes
        outside the vocabulary (``things_only``)."""
        if self.class_map is None:
            return labels
        return torch.where(labels >= 0, self.class_map[labels.clamp_min(0)], IGNORE_INDEX)

    def on_test_start(self) -> None:
        names, seen, convention = self._vocabulary()
        self.classifier = build_text_classifier(self.clip, names, self.hparams.templates)
        self._embedders = self.embedders()
        if self.generator is not None:
            self.generator.to(self.device).eval()
            self.generator.set_vocabulary(names)
        metrics: dict[str, nn.Module] = {}
        for name in self.embedder_names:
            metrics[f"{name}_sem"] = SemanticSegMetric(len(names), convention, IGNORE_INDEX, seen)
            if self.generator is not None:
                continue
            metrics[f"{name}_acc"] = RegionAccuracy(len(names), self.hparams.ks)
            if seen is not None:
                metrics[f"{name}_mask"] = MaskAccuracy(len(names), seen)
        self.metrics = nn.ModuleDict(metrics).to(self.device)

    def query_masks(self, batch: dict[str, list[Any]], index: int) -> tuple[Tensor, Tensor]:
        """Query masks ``bool [M, H, W]`` and their classes ``int64 [M]`` of image ``index`` of the batch (crowd
        segments excluded)."""
        assert self.classifier is not None
        unit = self.hparams.query_unit
        if unit == "instance" or (unit == "auto" and "masks" in batch):
            if "masks" not in batch:
                raise ValueError("query_unit 'instance' needs samples with `masks` and `mask_labels` (instances).")
            masks, labels = batch["masks"][index].bool(), batch["mask_labels"][index]
            info = batch.get("segments_info", [None] * (index + 1))[index]
            if info is not None and len(info) == len(masks):  # crowd regions are not queried (spec §9)
                keep = torch.tensor([not segment.get("iscrowd", 0) for segment in info], dtype=torch.bool)
                masks, labels = masks[keep], labels[keep]
            labels = self.to_vocabulary(labels.to(self.device))
            queried = labels >= 0
            return masks.to(self.device)[queried], labels[queried]
        sem_seg = self.to_vocabulary(batch["sem_seg"][index].to(self.device))  # [H, W]
        return sem_seg_to_masks(sem_seg, self.classifier.num_classes)

    def class_scores(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity of L2-normalised region embeddings ``[M, d]`` with every class (max over synonyms):
        ``[M, K]``."""
        assert self.classifier is not None
        return self.classifier.merge_synonyms(embeddings @ self.classifier.embeddings.T, dim=1)

    def _log_inversion(self, name: str, embedder: RegionEmbedder) -> None:
        if isinstance(embedder, MaskInversionEmbedder) and embedder.last_result is not None:
            result = embedder.last_result
            self.log(f"test/{name}/dice_last", result.losses[-1].item(), batch_size=1)
            self.log(f"test/{name}/seconds", sum(result.seconds.values()), batch_size=1)

    def _generator_step(self, batch: dict[str, list[Any]]) -> None:
        """Generator masks -> region embeddings -> ``logit_scale · cos`` -> Σ_q softmax · mask (MaskCLIP++ §8.5
        without fusion) -> mIoU against the full ``sem_seg``."""
        assert self.generator is not None and self.classifier is not None
        if "sem_seg" not in batch:
            raise ValueError("Mask classification with a generator scores mIoU: the DataModule must give `sem_seg`.")
        k = self.classifier.num_classes
        for index, proposal in enumerate(self.generator(batch)):
            masks = proposal.masks.to(self.device).float()  # [Q, H, W] at the original size
            image = batch["image"][index].to(self.device)  # [3, h, w]
            query = resize_masks(masks, tuple(image.shape[-2:])).clamp(0, 1)  # [Q, h, w]
            target = self.to_vocabulary(batch["sem_seg"][index].to(self.device))  # [H, W]
            for name, embedder in self._embedders.items():
                if masks.shape[0] == 0:
                    scores = masks.new_zeros(0, k)
                else:
                    regions = query if name == "maskinversion" else query >= 0.5
                    scores = self.hparams.logit_scale * self.class_scores(embedder.embed(image, regions))  # [Q, K]
                    self._log_inversion(name, embedder)
                prediction = semantic_inference(scores, masks, k).argmax(dim=0)  # [H, W]
                self.metrics[f"{name}_sem"].update(prediction[None], target[None])

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "RegionRetrieval optimises MaskInversion tokens with autograd: set `trainer.inference_mode: false` "
                "in the config (or Trainer(inference_mode=False))."
            )
        if self.generator is not None:
            self._generator_step(batch)
            return
        for index, image in enumerate(batch["image"]):
            masks, labels = self.query_masks(batch, index)
            if masks.shape[0] == 0:
                continue
            image = image.to(self.device)
            for name, embedder in self._embedders.items():
                scores = self.class_scores(embedder.embed(image, masks))  # [M, K]
                predictions = scores.argmax(dim=1)  # [M]
                self.metrics[f"{name}_acc"].update(scores, labels)
                if f"{name}_mask" in self.metrics:
                    self.metrics[f"{name}_mask"].update(predictions, labels)
                target = torch.where(masks.any(dim=0), self.to_vocabulary(batch["sem_seg"][index].to(self.device)),
                                     IGNORE_INDEX)
                self.metrics[f"{name}_sem"].update(paint_masks(masks, predictions)[None], target[None])
                self._log_inversion(name, embedder)

    def on_test_epoch_end(self) -> None:
        for key, metric in self.metrics.items():
            name = key.rsplit("_", 1)[0]
            values = metric.compute()
            if key.endswith("_sem"):
                values = {k: v for k, v in values.items() if k in SEMANTIC_KEYS}
            for metric_name, value in values.items():
                self.log(f"test/{name}/{metric_name}", value.float())
            metric.reset()

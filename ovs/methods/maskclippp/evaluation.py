"""MaskCLIP++ evaluation: the ground-truth-mask oracle (spec §9.1 mask accuracy) and inference with a mask generator
(spec §8.2-8.5: classify the generator's masks, fuse, void, semantic / panoptic / instance post-processing).

:class:`MaskCLIPPPEvaluation` is a mixin of :class:`ovs.methods.maskclippp.MaskCLIPPP`; it logs
``<stage>/<metric>`` scalars: ``mask_acc*`` and painted ``mIoU*`` in oracle mode; ``mIoU``, ``mIoU_seen``,
``mIoU_unseen``, ``fwIoU``, ``mAcc``, ``pAcc``, ``PQ`` / ``SQ`` / ``RQ`` (``_th``, ``_st``) and ``AP`` (``AP50``,
``AP75``, ``APs``, ``APm``, ``APl``) with a generator. Metrics of the PSM-free similarity get the suffix ``_no_psm``
(``eval_psm: both``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ovs.backbones import TextClassifier, build_text_classifier
from ovs.data.class_names import seen_mask
from ovs.data.constants import IGNORE_INDEX
from ovs.data.transforms import sem_seg_to_masks
from ovs.evaluation import InstanceAP, PanopticQuality, SemanticSegMetric
from ovs.generators.base import MaskGenerator, MaskProposals
from ovs.methods.maskclippp.fusion import fuse_scores, train_to_test_lut
from ovs.methods.maskclippp.metrics import MaskAccuracy
from ovs.methods.maskclippp.postprocess import instance_inference, panoptic_inference, semantic_inference

SEMANTIC_KEYS = ("mIoU", "mIoU_seen", "mIoU_unseen", "fwIoU", "mAcc", "pAcc")


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


def instance_targets(sample: dict[str, Any], is_thing: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Ground-truth instances ``(bool [M, H, W], int64 [M], bool [M] crowd)`` of one sample, or ``None``.

    Panoptic samples: the thing segments of ``pan_seg`` (crowd ones flagged). Instance samples (``masks`` with
    ``segments_info``, no ``pan_seg``): the annotated instances.
    """
    segments = sample.get("segments_info")
    if segments is None:
        return None
    device = is_thing.device
    if sample.get("pan_seg") is not None:
        chosen = [s for s in segments if 0 <= s["category_id"] < len(is_thing) and bool(is_thing[s["category_id"]])]
        ids = torch.tensor([s["id"] for s in chosen], dtype=torch.int64, device=device)
        masks = sample["pan_seg"].to(device)[None] == ids[:, None, None]  # [M, H, W]
    elif sample.get("masks") is not None and len(segments) == sample["masks"].shape[0]:
        chosen = list(segments)
        masks = sample["masks"].to(device).bool()
    else:
        return None
    labels = torch.tensor([s["category_id"] for s in chosen], dtype=torch.int64, device=device)
    crowd = torch.tensor([bool(s.get("iscrowd", 0)) for s in chosen], dtype=torch.bool, device=device)
    return masks, labels, crowd


class MaskCLIPPPEvaluation:
    """Validation / test of :class:`~ovs.methods.maskclippp.MaskCLIPPP` (oracle or generator mode)."""

    eval_metrics: nn.ModuleDict
    eval_classifier: TextClassifier | None
    generator: MaskGenerator | None

    # ------------------------------------------------------------------------------------------------------------
    # set-up

    def _eval_source(self, stage: str) -> Any:
        """The DataModule (or the first loader's Dataset) describing the evaluated vocabulary."""
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        if datamodule is not None and hasattr(datamodule, "class_names"):
            return datamodule
        trainer = self.trainer  # type: ignore[attr-defined]
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return getattr(loader, "dataset", None)

    def _eval_vocabulary(self, stage: str) -> tuple[list[list[str]], str, Tensor | None]:
        """Class names, mIoU convention and seen-class mask of the evaluated dataset.

        Seen classes (mIoU seen / unseen): the DataModule's ``seen`` (its ``seen_vocabulary``) when it defines one,
        else the generator's training vocabulary (spec §11 Q10), else MaskCLIP++'s training vocabulary.
        """
        source = self._eval_source(stage)
        names = getattr(source, "class_names", None)
        if names is None:
            raise ValueError("MaskCLIP++ evaluation needs the dataset's `class_names` (DataModule or Dataset).")
        names = [list(n) for n in names]
        seen = getattr(source, "seen", None)
        vocabulary = self._generator_seen_vocabulary() or self.train_vocabulary  # type: ignore[attr-defined]
        if seen is None and vocabulary is not None:
            seen = seen_mask(names, vocabulary, self.hparams.vocabulary_match)  # type: ignore[attr-defined]
        return names, getattr(source, "miou_convention", "detectron2"), seen

    def _generator_seen_vocabulary(self) -> list[list[str]] | None:
        if self.generator is None:
            return None
        return self.generator.training_vocabulary or getattr(self.generator, "logits_vocabulary", None)

    def _eval_is_thing(self, stage: str, num_classes: int) -> Tensor:
        """Thing flags of the evaluated classes (``is_thing`` of the DataModule / Dataset; all False without)."""
        flags = getattr(self._eval_source(stage), "is_thing", None)
        if flags is None or len(flags) != num_classes:
            return torch.zeros(num_classes, dtype=torch.bool, device=self.device)  # type: ignore[attr-defined]
        return torch.as_tensor(list(flags), dtype=torch.bool, device=self.device)  # type: ignore[attr-defined]

    def _eval_psms(self) -> dict[str, nn.Module]:
        """Suffix -> similarity model evaluated under it."""
        mode = self.hparams.eval_psm  # type: ignore[attr-defined]
        if mode == "psm":
            return {"": self.psm}  # type: ignore[attr-defined]
        if mode == "no_psm":
            return {"": self.no_psm}  # type: ignore[attr-defined]
        return {"": self.psm, "_no_psm": self.no_psm}  # type: ignore[attr-defined]

    def _setup_evaluation(self, stage: str) -> None:
        hp = self.hparams  # type: ignore[attr-defined]
        device = self.device  # type: ignore[attr-defined]
        names, convention, seen = self._eval_vocabulary(stage)
        self.eval_classifier = build_text_classifier(
            self.clip, names, self._templates(), hp.text_cache_dir  # type: ignore[attr-defined]
        )
        self.eval_names = names
        variants = list(self._eval_psms())
        metrics: dict[str, nn.Module] = {}
        for suffix in variants:
            metrics[f"sem{suffix}"] = SemanticSegMetric(len(names), convention, IGNORE_INDEX, seen)
            if self.generator is None:
                metrics[f"acc{suffix}"] = MaskAccuracy(len(names), seen)
        if self.generator is not None:
            self.generator.to(device).eval()
            self.generator.set_vocabulary(names)
            vocabulary = self._generator_seen_vocabulary()
            if hp.gamma > 0 and vocabulary is None:
                raise ValueError(
                    f"gamma = {hp.gamma} fuses the generator's classifier on the classes it was trained on, but "
                    f"{type(self.generator).__name__} has no training_vocabulary: set it (e.g. coco_panoptic) or gamma: 0."
                )
            self.generator_seen = (
                seen_mask(names, vocabulary, hp.vocabulary_match).to(device) if vocabulary is not None
                else torch.zeros(len(names), dtype=torch.bool, device=device)
            )
            self.eval_is_thing = self._eval_is_thing(stage, len(names))
            self._luts: dict[int, Tensor] = {}
            for suffix in variants:
                if hp.panoptic_on:
                    metrics[f"pan{suffix}"] = PanopticQuality(len(names), self.eval_is_thing.cpu())
                if hp.instance_on:
                    thing_ids = torch.nonzero(self.eval_is_thing).flatten().tolist()
                    metrics[f"ins{suffix}"] = InstanceAP(
                        len(names), thing_ids or None, max_detections=hp.detections_per_image
                    )
        self.eval_metrics = nn.ModuleDict(metrics).to(device)

    # ------------------------------------------------------------------------------------------------------------
    # steps

    def _oracle_step(self, batch: dict[str, list[Any]]) -> None:
        """Classify every GT mask (the dataset's ``masks``, else one per class of ``sem_seg``), update the mask
        accuracy and the mIoU of the prediction painted into the masks (pixels outside every mask are ignored)."""
        assert self.eval_classifier is not None
        device = self.device  # type: ignore[attr-defined]
        k = self.eval_classifier.num_classes
        if "masks" in batch:
            masks = [m.to(device).bool() for m in batch["masks"]]
            labels = [lab.to(device) for lab in batch["mask_labels"]]
        else:
            pairs = [sem_seg_to_masks(s.to(device), k) for s in batch["sem_seg"]]
            masks, labels = [p[0] for p in pairs], [p[1] for p in pairs]
        for suffix, logits in self._classify(batch["image"], masks).items():
            predictions = torch.cat([lg.argmax(dim=1) for lg in logits]) if logits else torch.zeros(0, dtype=torch.int64)
            self.eval_metrics[f"acc{suffix}"].update(predictions.to(device), torch.cat(labels))
            for image_masks, image_logits, target in zip(masks, logits, batch["sem_seg"]):
                painted = paint_masks(image_masks, image_logits.argmax(dim=1))
                target = torch.where(image_masks.any(dim=0), target.to(device), IGNORE_INDEX)
                self.eval_metrics[f"sem{suffix}"].update(painted, target)

    def _classify(self, images: list[Tensor], masks: list[Tensor]) -> dict[str, list[Tensor]]:
        """Suffix -> per-image MaskCLIP++ logits ``[Q_b, K]`` (max over synonyms) for each evaluated PSM; the mask
        embeddings are computed once for the whole batch (the CLIP side is batched)."""
        assert self.eval_classifier is not None
        device = self.device  # type: ignore[attr-defined]
        counts = [m.shape[0] for m in masks]
        psms = self._eval_psms()
        k = self.eval_classifier.num_classes
        if sum(counts) == 0:
            return {suffix: [torch.zeros(0, k, device=device) for _ in masks] for suffix in psms}
        inputs = self.prepare_batch(images, masks, self.hparams.test_short_side)  # type: ignore[attr-defined]
        embeddings = self.encoder(inputs, dense=any(p.needs_dense for p in psms.values()))  # type: ignore[attr-defined]
        text = self.eval_classifier.per_template.to(device)
        result = {}
        for suffix, psm in psms.items():
            logits = self.mask_logits(embeddings, inputs.image_index, text, psm)  # type: ignore[attr-defined]
            merged = self.eval_classifier.merge_synonyms(logits, dim=1)  # [N, K]
            result[suffix] = list(merged.split(counts))
        return result

    def _lut(self, proposals: MaskProposals) -> Tensor | None:
        """Train -> test look-up table of a closed-vocabulary generator (cached per vocabulary)."""
        if proposals.logits_vocabulary is None:
            return None
        key = id(proposals.logits_vocabulary)
        if key not in self._luts:
            self._luts[key] = train_to_test_lut(proposals.logits_vocabulary, self.eval_names,  # type: ignore[attr-defined]
                                                self.hparams.vocabulary_match).to(self.device)  # type: ignore[attr-defined]
        return self._luts[key]

    def _generator_step(self, batch: dict[str, list[Any]]) -> None:
        """Generator masks -> MaskCLIP++ logits -> fusion / void -> semantic, panoptic, instance results at the
        original image size -> metrics (spec §8.2)."""
        hp = self.hparams  # type: ignore[attr-defined]
        device = self.device  # type: ignore[attr-defined]
        assert self.generator is not None and self.eval_classifier is not None
        proposals = self.generator(batch)
        masks = [p.masks.to(device).float() for p in proposals]  # [Q_b, H, W] at the original size
        k = self.eval_classifier.num_classes
        samples = [{key: values[i] for key, values in batch.items()} for i in range(len(masks))]
        for suffix, logits in self._classify(batch["image"], masks).items():
            for proposal, image_masks, clip_logits, sample in zip(proposals, masks, logits, samples):
                generator_logits = None if proposal.logits is None else proposal.logits.to(device)
                scores = fuse_scores(clip_logits, generator_logits, self.generator_seen, hp.gamma, self._lut(proposal))
                if "sem_seg" in sample:
                    prediction = semantic_inference(scores, image_masks, k).argmax(dim=0)  # [H, W]
                    self.eval_metrics[f"sem{suffix}"].update(prediction, sample["sem_seg"].to(device))
                if f"pan{suffix}" in self.eval_metrics and sample.get("pan_seg") is not None:
                    result = panoptic_inference(
                        scores, image_masks, self.eval_is_thing, hp.object_mask_threshold, hp.overlap_threshold
                    )
                    self.eval_metrics[f"pan{suffix}"].update(
                        result.pan_seg, result.segments_info, sample["pan_seg"], sample["segments_info"]
                    )
                targets = instance_targets(sample, self.eval_is_thing)
                if f"ins{suffix}" in self.eval_metrics and targets is not None:
                    things = self.eval_is_thing if hp.panoptic_on else None
                    result = instance_inference(scores, image_masks, k, hp.detections_per_image, things)
                    self.eval_metrics[f"ins{suffix}"].update(result.masks, result.scores, result.labels, *targets)

    def _evaluation_step(self, batch: dict[str, list[Any]]) -> None:
        if self.generator is None:
            self._oracle_step(batch)
        else:
            self._generator_step(batch)

    def _log_evaluation(self, stage: str) -> None:
        """Log every scalar metric as ``<stage>/<name><suffix>`` and reset the metrics; at test time keep the
        per-class IoU (``IoU<suffix>``, %) in ``test_per_class`` (``per_class_iou.csv`` of tools/eval.py)."""
        per_class: dict[str, list[float]] = {}
        for name, metric in self.eval_metrics.items():
            suffix = name[3:]
            if metric.update_count == 0 and name.startswith(("pan", "ins")):
                continue  # the dataset has no panoptic / instance ground truth: nothing to report
            values = metric.compute()
            if name.startswith("sem") and stage == "test":
                per_class[f"IoU{suffix}"] = values["IoU"].tolist()
            if name.startswith("sem"):
                wanted = SEMANTIC_KEYS if self.generator is not None else ("mIoU", "mIoU_seen", "mIoU_unseen")
                values = {k: v for k, v in values.items() if k in wanted}
            for key, value in values.items():
                if isinstance(value, Tensor) and value.ndim == 0:
                    self.log(f"{stage}/{key}{suffix}", value.float())  # type: ignore[attr-defined]
            metric.reset()
        if per_class:
            self.test_per_class = {"class": [names[0] for names in self.eval_names], **per_class}

    # ------------------------------------------------------------------------------------------------------------
    # Lightning hooks

    def on_validation_start(self) -> None:
        self._setup_evaluation("val")

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_start(self) -> None:
        self._setup_evaluation("test")

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._evaluation_step(batch)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

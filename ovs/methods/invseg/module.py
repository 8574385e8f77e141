"""The InvSeg LightningModule: eval-only, one test-time prompt inversion per image (InvSeg paper; spec §9).

Per test image: candidate classes (spec §8) + "background" -> prompt (spec §6) -> :class:`PromptInverter` (15 Adam
steps on the token embeddings, spec §9) -> argmax of the class maps at the map resolution -> label map at the label
size (O15). The shared metric (:class:`~ovs.evaluation.SemanticSegMetric`) and the ``test/<metric>`` scalars match
:class:`~ovs.methods.DenseSegmenter`, so ``tools/eval.py`` prints InvSeg in the common table; it also logs
``test/loss_first``, ``test/loss_last``, ``test/seconds_per_image`` and ``test/candidates_per_image``.

Lightning must not wrap the test loop in ``torch.inference_mode`` (``trainer.inference_mode: false``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor

from ovs.data import IGNORE_INDEX
from ovs.evaluation import SemanticSegMetric, log_per_class_iou_table, make_palette
from ovs.evaluation.semantic import CONVENTIONS
from ovs.methods.base import eval_datamodule, log_test_overlays
from ovs.methods.invseg.filtering import ClassFilter
from ovs.methods.invseg.inversion import InvSegConfig, PromptInverter
from ovs.methods.invseg.prompt import BACKGROUND, build_prompts
from ovs.methods.invseg.weights import DEFAULT_REPO, DiffusionModel, load_stable_diffusion

logger = logging.getLogger(__name__)

#: Scalars logged per dataset at the end of ``trainer.test``.
TEST_METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "pAcc", "mAcc", "fwIoU")


class InvSeg(LightningModule):
    """InvSeg on Stable Diffusion 2.1 (diffusers), evaluated through ``tools/eval.py``.

    Args:
        pretrained: a local diffusers folder or a hub repo id in the local cache (``stabilityai/
            stable-diffusion-2-1-base``); ignored when ``tiny`` is given.
        cache_dir: extra hub cache searched first.
        tiny: build a random tiny SD-shaped model instead (``{seed, unet, vae, text_encoder}`` overrides of
            :func:`~ovs.methods.invseg.tiny.build_tiny_diffusion`): tests and the synthetic benchmark.
        invseg: overrides of :class:`InvSegConfig` (steps, lr, alpha, views, timesteps, resolutions, open points).
        class_source: ``oracle`` (default, the paper's GT-class protocol), ``clip_filter``, ``precomputed`` or
            ``all`` (spec §8).
        class_filter: arguments of :class:`ClassFilter` (``clip_filter``: clip_model, clip_pretrained, top_p, k_max,
            multi_crop, templates; ``precomputed``: precomputed, keys, synonyms).
        prompt_separator, prompt_template: the prompt format (O12: names joined by spaces, "background" last).
        seed: noise and crops of sample ``i`` come from ``seed + i``.
        miou_convention: metric convention (``mmseg``: IoU over all classes, background included; spec §3);
            ``None`` takes the DataModule's.
        num_overlays: prediction overlays logged to TensorBoard per dataset.
        model: an already-built :class:`DiffusionModel` (Python API, tests).
    """

    def __init__(
        self,
        pretrained: str = DEFAULT_REPO,
        cache_dir: str | None = None,
        tiny: dict[str, Any] | None = None,
        invseg: dict[str, Any] | None = None,
        class_source: str = "oracle",
        class_filter: dict[str, Any] | None = None,
        prompt_separator: str = " ",
        prompt_template: str = "{}",
        seed: int = 0,
        miou_convention: str | None = "mmseg",
        num_overlays: int = 4,
        model: DiffusionModel | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if miou_convention not in (*CONVENTIONS, None):
            raise ValueError(f"miou_convention must be one of {CONVENTIONS} or None, got {miou_convention!r}.")
        if num_overlays < 0:
            raise ValueError(f"num_overlays must be >= 0, got {num_overlays}.")
        if invseg and "class_source" in invseg:
            raise ValueError("Set the class source with model.init_args.class_source, not inside invseg.")
        # class_source is part of the recorded protocol (tools/eval.py writes self.config with the results)
        self.config = InvSegConfig.from_dict({**(invseg or {}), "class_source": class_source})
        self.class_filter = ClassFilter(class_source, **(class_filter or {}))
        self.filter_clip = self.class_filter.clip  # a submodule, so Lightning moves the CLIP filter with the model
        if model is None:
            if tiny is not None:
                from ovs.methods.invseg.tiny import build_tiny_diffusion

                model = build_tiny_diffusion(**tiny)
            else:
                model = load_stable_diffusion(pretrained, cache_dir)
        self.diffusion = model
        # Registered as submodules so Lightning moves them to the device; all frozen.
        self.unet, self.vae, self.text_encoder = model.unet, model.vae, model.text_encoder
        self.inverter = PromptInverter(model, self.config)
        self.prompt_separator, self.prompt_template = prompt_separator, prompt_template
        self.seed, self.miou_convention, self.num_overlays = seed, miou_convention, num_overlays
        self.metric: SemanticSegMetric | None = None
        self.test_per_class: dict[str, list[Any]] | None = None
        self._class_names: list[list[str]] = []
        self._background_index: int | None = None
        self.dataset_name: str | None = None
        self._sample_index = 0
        self._stats: dict[str, list[float]] = {}
        self._overlays_logged = 0
        self._palette: Tensor | None = None

    # ------------------------------------------------------------------------------------------------------------
    # One image

    def segment_image(self, image: Tensor, class_names: Sequence[Sequence[str]], background_index: int | None,
                      output_size: tuple[int, int], target: Tensor | None = None, sample_seed: int | None = None,
                      file_name: str | None = None) -> tuple[Tensor, dict[str, float]]:
        """InvSeg label map ``int64 [H, W]`` (dataset class ids) of one image ``[3, h, w]`` in ``[0, 255]``.

        Candidates come from the class filter (``target`` for the oracle); "background" is the last category and
        maps to ``background_index``; without a background class its pixels take the best foreground category.
        """
        candidates = self.class_filter.candidates(image, target, class_names, background_index, file_name)
        names = [class_names[c][0] for c in candidates] + [BACKGROUND]
        prompts = build_prompts(self.diffusion.tokenizer, names, self.prompt_separator, self.prompt_template)
        generator = torch.Generator().manual_seed(self.seed if sample_seed is None else sample_seed)
        result = self.inverter.invert(image.to(self.device), prompts, generator)
        maps = result.maps  # [C, L, L], background last
        ids = candidates + [background_index if background_index is not None else -1]
        if background_index is None and candidates:
            maps, ids = maps[:-1], ids[:-1]
        lookup = torch.tensor(ids, device=maps.device)
        if self.config.final_resize == "nearest":
            labels = lookup[maps.argmax(dim=0)]  # [L, L]
            labels = F.interpolate(labels[None, None].float(), size=output_size, mode="nearest")[0, 0].long()
        else:
            upsampled = F.interpolate(maps[None], size=output_size, mode="bilinear", align_corners=False)[0]
            labels = lookup[upsampled.argmax(dim=0)]
        labels = torch.where(labels < 0, torch.full_like(labels, IGNORE_INDEX), labels)
        stats = {
            "loss_first": result.losses[0] if result.losses else float("nan"),
            "loss_last": result.losses[-1] if result.losses else float("nan"),
            "seconds_per_image": result.seconds,
            "candidates_per_image": float(len(candidates)),
        }
        return labels, stats

    # ------------------------------------------------------------------------------------------------------------
    # Lightning test loop

    def on_test_start(self) -> None:
        """Read the dataset (name, classes, background) and reset the metric."""
        datamodule = eval_datamodule(self)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("InvSeg optimises prompts at test time: set `trainer.inference_mode: false` in the "
                               "config (configs/invseg_*.yaml do).")
        self.dataset_name = str(datamodule.name)
        self._class_names = [list(n) for n in datamodule.class_names]
        self._background_index = datamodule.background_index
        seen = getattr(datamodule, "seen", None)
        convention = self.miou_convention or getattr(datamodule, "miou_convention", "mmseg")
        self.metric = SemanticSegMetric(len(self._class_names), convention, IGNORE_INDEX, seen).to(self.device)
        self._palette = make_palette(len(self._class_names))
        self._stats = {}
        self._sample_index = 0
        self._overlays_logged = 0
        logger.info("InvSeg on %s: class_source=%s, %d steps, model %s", self.dataset_name,
                    self.class_filter.source, self.config.steps, self.diffusion.source)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """Invert and segment every image of the batch, update the metric, log the first overlays."""
        if self.metric is None:
            raise RuntimeError("on_test_start did not run: test this module with trainer.test(model, datamodule=...).")
        predictions, targets = [], list(batch["sem_seg"])
        metas = batch.get("meta") or [{}] * len(targets)
        for image, target, meta in zip(batch["image"], targets, metas):
            labels, stats = self.segment_image(image, self._class_names, self._background_index,
                                               tuple(target.shape[-2:]), target, self.seed + self._sample_index,
                                               meta.get("file_name"))
            self._sample_index += 1
            predictions.append(labels)
            for key, value in stats.items():
                self._stats.setdefault(key, []).append(value)
        self.metric.update(predictions, targets)
        self._log_overlays(list(batch["image"]), predictions, targets)

    def on_test_epoch_end(self) -> None:
        """Log ``test/<metric>``, the mean loss / runtime / candidate statistics and the per-class IoU table."""
        if self.metric is None:
            return
        values = self.metric.compute()
        scalars = {f"test/{name}": float(values[name]) for name in TEST_METRICS if name in values}
        scalars.update({f"test/{k}": float(torch.tensor(v).nanmean()) for k, v in self._stats.items()})
        self.log_dict(scalars)
        self.test_per_class = {"class": [names[0] for names in self._class_names], "IoU": values["IoU"].tolist()}
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(writer, "add_text"):
            log_per_class_iou_table(writer, [names[0] for names in self._class_names], values["IoU"].cpu(),
                                    tag=f"test/{self.dataset_name}/per_class_iou")
            writer.add_text(f"test/{self.dataset_name}/class_source", self.class_filter.source)
        self.metric.reset()

    def _log_overlays(self, images: list[Tensor], predictions: list[Tensor], targets: list[Tensor]) -> None:
        log_test_overlays(self, images, predictions, targets)

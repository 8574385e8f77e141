"""Referring-expression retrieval (paper §4.1 (a); maskinversion spec §4 (a)): for every expression, rank the
candidate masks of its image by the cosine similarity of their region embeddings with the expression's text
embedding (raw sentence, CLIP tokenizer truncation, no template). Logged per embedder ``E``: ``test/E/Acc@1``,
``Acc@5``, ``Acc@10``, ``mIoU`` and ``oIoU`` (:class:`ovs.evaluation.referring.ReferringRetrieval`). α = 5 is the
paper's setting for RefCOCO / RefCOCO+ (``configs/maskinversion_refcoco_vit_b16.yaml``), 0 for PhraseCut."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ovs.evaluation.referring import ReferringRetrieval
from ovs.methods.maskinversion.module import RegionRetrieval


class ReferringRetrievalModule(RegionRetrieval):
    """Text-to-mask retrieval with MaskInversion and the baselines; arguments as :class:`RegionRetrieval` (the
    vocabulary arguments ``templates`` / ``query_unit`` are unused)."""

    def on_test_start(self) -> None:
        self._embedders = self.embedders()
        self.metrics = nn.ModuleDict({name: ReferringRetrieval(self.hparams.ks) for name in self.embedder_names})
        self.metrics.to(self.device)

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "ReferringRetrievalModule optimises MaskInversion tokens with autograd: set "
                "`trainer.inference_mode: false` in the config (or Trainer(inference_mode=False))."
            )
        for image, masks, expressions, targets in zip(
            batch["image"], batch["masks"], batch["expressions"], batch["targets"]
        ):
            if not expressions or masks.shape[0] == 0:
                continue
            masks = masks.bool().to(self.device)
            targets = targets.to(self.device)
            with torch.no_grad():
                text = self.clip.encode_text(list(expressions))  # [E, d], normalised
            for name, embedder in self._embedders.items():
                scores = text @ embedder.embed(image.to(self.device), masks).T  # [E, M]
                self.metrics[name].update(scores, targets, masks, masks[targets])

    def on_test_epoch_end(self) -> None:
        for name, metric in self.metrics.items():
            for metric_name, value in metric.compute().items():
                self.log(f"test/{name}/{metric_name}", value.float())
            metric.reset()

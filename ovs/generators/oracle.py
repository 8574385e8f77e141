"""Ground-truth "generator": the dataset's own masks, so generator-vs-oracle is one config switch (maskclippp.md §9.2
``GTSegmentor``)."""

from __future__ import annotations

import torch

from ovs.data.transforms import sem_seg_to_masks
from ovs.generators.base import Batch, MaskGenerator, MaskProposals


class GroundTruthMasks(MaskGenerator):
    """Returns each image's ground-truth masks as ``{0, 1}`` float masks, without logits.

    Uses the sample's ``masks`` (panoptic segments without crowd, instances) when present, else one mask per class
    of ``sem_seg`` (sorted class ids, as the reference ``MaskAccEvaluator``).

    Args:
        num_classes: K of ``sem_seg`` labels; ``None`` takes ``max label + 1`` of each image.
    """

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, batch: Batch) -> list[MaskProposals]:
        if "masks" in batch:
            return [MaskProposals(masks.to(torch.float32)) for masks in batch["masks"]]
        if "sem_seg" not in batch:
            raise ValueError("GroundTruthMasks needs samples with `masks` or `sem_seg`.")
        proposals = []
        for sem_seg in batch["sem_seg"]:
            k = self.num_classes if self.num_classes is not None else int(sem_seg.max().clamp_min(-1)) + 1
            masks, _ = sem_seg_to_masks(sem_seg, k)
            proposals.append(MaskProposals(masks.to(torch.float32)))
        return proposals

"""LightningDataModule base shared by every dataset family (torchgeo style: datasets built in ``setup``).

Evaluation loaders use batch size 1 by default and :func:`ovs.data.collate.list_collate`; under DDP they use
:class:`UnpaddedDistributedSampler` (every image exactly once, so synced metrics equal single-process ones). An optional
``test_resize`` (``{"mode": "short" | "long" | "square", "size": int}``) resizes images only, labels keep the
original size (training-free.md §9.1: "GT is not resized").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ovs.data.base import ClassNamesArg, SegmentationDataset
from ovs.data.class_names import load_class_names, seen_mask
from ovs.data.collate import list_collate
from ovs.data.sampler import ResumableDataLoader, ResumableSampler
from ovs.data.transforms import build_test_resize

MIOU_CONVENTIONS = ("detectron2", "mmseg")
"""mIoU averaging conventions of :class:`ovs.evaluation.SemanticSegMetric`."""


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sampler of rank ``r`` of ``W``: samples ``r, r + W, r + 2W, ...`` in order, without the padding of
    :class:`~torch.utils.data.DistributedSampler` (which repeats samples so every rank gets as many, counting them
    twice in the metrics). Ranks may get one sample fewer; the metrics' sync sums their states."""

    def __init__(self, dataset: Dataset[Any], num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


def eval_sampler(dataset: Dataset[Any]) -> UnpaddedDistributedSampler | None:
    """:class:`UnpaddedDistributedSampler` when a process group of several ranks is running, else ``None``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return UnpaddedDistributedSampler(dataset)
    return None


class SegDataModule(LightningDataModule):
    """Common loader settings; subclasses set :attr:`dataset_class` and, if trainable, implement
    :meth:`build_train_dataset`.

    Args:
        root: datasets root (``None``: ``$DETECTRON2_DATASETS`` or ``./datasets``).
        split: split evaluated by ``val_dataloader`` / ``test_dataloader``.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (default 1, as both references).
        num_workers: DataLoader workers.
        seed: base seed of the training order (:class:`ovs.data.sampler.ResumableSampler`: epoch ``e`` is the
            permutation seeded by ``seed + e``, resumed mid-epoch from checkpoints).
        test_resize: optional test-time image resize, see :func:`ovs.data.transforms.build_test_resize`.
        class_names: override of the dataset's class-name file (same number of classes).
        miou_convention: ``"detectron2"`` or ``"mmseg"``, read by the method when it builds its metric.
        seen_vocabulary: class-name file of the training vocabulary (e.g. ``"coco_panoptic"``); when given,
            :attr:`seen` marks the classes it shares a synonym with (mIoU seen / unseen, maskclippp.md §9.1).
    """

    dataset_class: type[SegmentationDataset] = SegmentationDataset
    """Dataset class evaluated by this DataModule (set per variant); describes it before ``setup``."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        test_resize: dict[str, Any] | None = None,
        class_names: ClassNamesArg = None,
        miou_convention: str = "detectron2",
        seen_vocabulary: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if miou_convention not in MIOU_CONVENTIONS:
            raise ValueError(f"miou_convention must be one of {MIOU_CONVENTIONS}, got {miou_convention!r}.")
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError("batch sizes must be >= 1 and num_workers >= 0.")
        self.root = root
        self.split = split
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.test_resize = test_resize
        self.image_transform = build_test_resize(test_resize)
        self.class_names_arg = class_names
        self.miou_convention = miou_convention
        self.seen_vocabulary = seen_vocabulary
        self.train_dataset: Dataset[Any] | None = None
        self.val_dataset: SegmentationDataset | None = None
        self.test_dataset: SegmentationDataset | None = None

    @property
    def name(self) -> str:
        """Benchmark name (``ade150``, ``pc59``, ...), as in ``meta["dataset"]``."""
        return self.dataset_class.name

    @property
    def num_classes(self) -> int:
        """K, the number of label ids."""
        return self.dataset_class.num_classes

    @property
    def background_index(self) -> int | None:
        """Label id of the background class (VOC-21, PC-60, COCO-Object), else ``None``."""
        return self.dataset_class.background_index

    @property
    def class_names(self) -> list[list[str]]:
        """Synonyms per class of the evaluated vocabulary."""
        if self.class_names_arg is None:
            return load_class_names(self.dataset_class.default_class_names)
        if isinstance(self.class_names_arg, (str, os.PathLike)):
            return load_class_names(self.class_names_arg)
        return [list(names) for names in self.class_names_arg]

    @property
    def seen(self) -> torch.Tensor | None:
        """``bool [K]``: classes sharing a synonym with ``seen_vocabulary`` (``None`` without one)."""
        if self.seen_vocabulary is None:
            return None
        return seen_mask(self.class_names, load_class_names(self.seen_vocabulary))

    def build_train_dataset(self) -> Dataset[Any]:
        """Training dataset with its augmentation (trainable families only)."""
        raise NotImplementedError(f"{type(self).__name__} is evaluation-only; it has no training split.")

    def build_eval_dataset(self) -> SegmentationDataset:
        """``dataset_class`` on ``split`` with the test-time image transform."""
        return self.dataset_class(
            root=self.root, split=self.split, class_names=self.class_names_arg, image_transform=self.image_transform
        )

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.train_dataset = self.build_train_dataset()
        if stage in ("fit", "validate", None):
            self.val_dataset = self.build_eval_dataset()
        if stage in ("test", "predict", None) and self.test_dataset is None:
            self.test_dataset = self.build_eval_dataset()

    def validate(self) -> None:
        """Build the evaluated split now (checks its files exist) so that a missing dataset stops a multi-dataset
        evaluation before its first image; ``trainer.test`` reuses it."""
        self.setup("test")

    def _loader(self, dataset: Dataset[Any] | None, batch_size: int) -> DataLoader[Any]:
        """Evaluation loader: in order, every sample exactly once (also across DDP ranks)."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() for this stage before asking for its loader.")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=eval_sampler(dataset),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=list_collate,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled, ``drop_last`` loader whose position in the epoch is saved in (and resumed from) checkpoints."""
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() for this stage before asking for its loader.")
        return ResumableDataLoader(
            self.train_dataset,
            sampler=ResumableSampler(self.train_dataset, seed=self.seed),
            batch_size=self.batch_size,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=list_collate,
        )

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.val_dataset, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.test_dataset, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader[Any]:
        return self._loader(self.test_dataset, self.eval_batch_size)

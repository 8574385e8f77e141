"""LightningDataModule of the synthetic benchmark, loading through the real COCO-panoptic / semantic Dataset classes.

``prepare_data`` generates the tree (cached by ``meta.json``); the datasets are thin subclasses of
:class:`ovs.data.COCOPanoptic` and :class:`ovs.data.SemanticSegDataset` that only change the class list (44 classes
from ``ovs_synthetic.txt``), the number of classes and the image suffix (``.png``, lossless).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ovs.data.base import ClassNamesArg, SemanticSegDataset, SegmentationDataset, pair_by_name
from ovs.data.coco import COCO_SPLITS, COCOPanoptic
from ovs.data.datamodule import SegDataModule
from ovs.data.io import require_path, resolve_root
from ovs.data.synthetic.classes import CLASS_FILE, IS_THING, NUM_CLASSES, SEEN_CLASSES, seen_mask
from ovs.data.synthetic.generate import generate_benchmark
from ovs.data.transforms import lsj_transform

TASKS = ("panoptic", "semantic")
"""What the DataModule loads: panoptic samples (masks per instance / stuff class) or semantic label maps."""


def default_root() -> Path:
    """``$DETECTRON2_DATASETS/ovs_synthetic``, else ``./datasets/ovs_synthetic``."""
    return resolve_root(None) / "ovs_synthetic"


class SyntheticPanoptic(COCOPanoptic):
    """The synthetic benchmark in the COCO panoptic layout (36 things, then 8 stuff classes).

    ``root`` is the benchmark root (the folder holding ``coco/``), e.g. ``datasets/ovs_synthetic``.
    """

    name = "ovs_synthetic"
    num_classes = NUM_CLASSES
    default_class_names = str(CLASS_FILE)
    image_suffix = ".png"


class SyntheticSemantic(SemanticSegDataset):
    """The synthetic benchmark as image + semantic PNG pairs (``panoptic_semseg_*``, 0..43, 255 ignore)."""

    name = "ovs_synthetic"
    num_classes = NUM_CLASSES
    default_class_names = str(CLASS_FILE)
    splits = COCO_SPLITS

    def _find_files(self) -> list[tuple[Path, Path]]:
        base = require_path(self.root / "coco", "Synthetic benchmark root", None)
        split = self.split_dir(self.split)
        return pair_by_name(base / f"panoptic_semseg_{split}", base / split, ".png", ".png", None)


class SyntheticDataModule(SegDataModule):
    """Synthetic open-vocabulary benchmark: generated in ``prepare_data``, then read like COCO.

    Args:
        root: benchmark root (default :func:`default_root`).
        num_train: images of the ``train`` split (only seen thing classes).
        num_val: images of the ``val`` split (all classes).
        image_size: side of the generated images.
        seed: generation seed.
        task: ``"panoptic"`` (COCO panoptic samples, one mask per instance / stuff class) or ``"semantic"``
            (semantic label maps; training masks are one per class present).
        crop_size: training crop side of the large-scale-jitter transform (default ``image_size``).
        min_scale, max_scale: large-scale-jitter range (no colour augmentation: colour is a class attribute).
        **kwargs: :class:`ovs.data.SegDataModule` arguments (``split``, ``batch_size``, ``eval_batch_size``,
            ``num_workers``, ``test_resize``, ``class_names``, ``miou_convention``).
    """

    dataset_class = SyntheticPanoptic

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        num_train: int = 2000,
        num_val: int = 500,
        image_size: int = 112,
        seed: int = 0,
        task: str = "panoptic",
        crop_size: int | None = None,
        min_scale: float = 0.5,
        max_scale: float = 2.0,
        **kwargs: object,
    ) -> None:
        super().__init__(root=default_root() if root is None else root, **kwargs)  # type: ignore[arg-type]
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if num_train < 1 or num_val < 1:
            raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.num_train, self.num_val, self.image_size, self.seed = num_train, num_val, image_size, seed
        self.task = task
        self.crop_size = image_size if crop_size is None else crop_size
        self.min_scale, self.max_scale = min_scale, max_scale
        self.dataset_class = SyntheticPanoptic if task == "panoptic" else SyntheticSemantic

    @property
    def is_thing(self) -> list[bool]:
        """36 things (contiguous ids 0..35) then 8 stuff classes."""
        return list(IS_THING)

    @property
    def seen(self) -> torch.Tensor:
        """``bool [44]``: classes that appear in the ``train`` split (all but the 9 unseen things); read by the
        methods' metrics for the seen / unseen mIoU."""
        return seen_mask()

    @property
    def seen_classes(self) -> tuple[int, ...]:
        """Contiguous ids of the seen classes."""
        return SEEN_CLASSES

    def prepare_data(self) -> None:
        """Generate the ``train`` and ``val`` splits unless ``meta.json`` says they exist with these parameters."""
        generate_benchmark(self.root, self.num_train, self.num_val, self.seed, self.image_size)

    def _dataset(self, split: str, train: bool) -> SegmentationDataset:
        names: ClassNamesArg = self.class_names_arg
        if train:
            transform = lsj_transform(self.crop_size, self.min_scale, self.max_scale)
            return self.dataset_class(self.root, split, names, transforms=transform)
        return self.dataset_class(self.root, split, names, image_transform=self.image_transform)

    def build_train_dataset(self) -> SegmentationDataset:
        return self._dataset("train", train=True)

    def build_eval_dataset(self) -> SegmentationDataset:
        return self._dataset(self.split, train=False)

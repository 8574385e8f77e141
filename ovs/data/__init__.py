"""Datasets in the detectron2 / mmseg on-disk layouts, one DataModule per family, transforms and class names.

See docs/architecture.md ("Dataset contract") and docs/datasets.md (layouts and preparation commands).
"""

from ovs.data.ade20k import ADE20K, ADE20KDataModule, ADE20KFull, ADE20KInstance, ADE20KPanoptic
from ovs.data.base import InstanceSegDataset, PanopticSegDataset, SegmentationDataset, SemanticSegDataset
from ovs.data.cityscapes import Cityscapes, CityscapesDataModule
from ovs.data.class_names import load_class_names, seen_mask
from ovs.data.coco import (
    COCOObject,
    COCOObjectDataModule,
    COCOPanoptic,
    COCOPanopticDataModule,
    COCOStuff,
    COCOStuffDataModule,
)
from ovs.data.collate import list_collate
from ovs.data.constants import IGNORE_INDEX
from ovs.data.datamodule import SegDataModule
from ovs.data.io import DatasetFormatError, DatasetNotFoundError
from ovs.data.pascal import (
    PascalContext59,
    PascalContext60,
    PascalContext459,
    PascalContextDataModule,
    PascalVOC20,
    PascalVOC21,
    PascalVOCDataModule,
)
from ovs.data.registry import EVAL_PRESETS, EvalPreset, build_eval_datamodule, get_eval_preset
from ovs.data.sampler import ResumableDataLoader, ResumableSampler, SeededIndex, augmentation_generator

__all__ = [
    "ADE20K",
    "ADE20KDataModule",
    "ADE20KFull",
    "ADE20KInstance",
    "ADE20KPanoptic",
    "COCOObject",
    "COCOObjectDataModule",
    "COCOPanoptic",
    "COCOPanopticDataModule",
    "COCOStuff",
    "COCOStuffDataModule",
    "Cityscapes",
    "CityscapesDataModule",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "EVAL_PRESETS",
    "EvalPreset",
    "IGNORE_INDEX",
    "InstanceSegDataset",
    "PanopticSegDataset",
    "PascalContext459",
    "PascalContext59",
    "PascalContext60",
    "PascalContextDataModule",
    "PascalVOC20",
    "PascalVOC21",
    "PascalVOCDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "SeededIndex",
    "SegDataModule",
    "SegmentationDataset",
    "SemanticSegDataset",
    "augmentation_generator",
    "build_eval_datamodule",
    "get_eval_preset",
    "list_collate",
    "load_class_names",
    "seen_mask",
]

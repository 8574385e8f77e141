"""PASCAL VOC 2012 (VOC-20 / VOC-21) and PASCAL Context (PC-59 / PC-459 in the detectron2 layout, PC-60 in the
mmseg layout) (maskclippp.md §7.2, training-free.md §2.5).

```
pascal_voc_d2/images/{training,validation}/*.jpg
pascal_voc_d2/annotations_pascal21/{training,validation}/*.png   0 = background, 1..20, 255 ignore
pascal_voc_d2/annotations_pascal20/{training,validation}/*.png   0..19, background and boundaries 255
pascal_ctx_d2/images/{training,validation}/*.jpg
pascal_ctx_d2/annotations_ctx59/{training,validation}/*.png      0..58, 255 ignore (background)
pascal_ctx_d2/annotations_ctx459/{training,validation}/*.tif     uint16 0..458, 65535 ignore
VOCdevkit/VOC2010/JPEGImages/*.jpg, SegmentationClassContext/*.png (0 = background, 1..59),
VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt
```
"""

from __future__ import annotations

from pathlib import Path

from ovs.data.base import SemanticSegDataset, SegmentationDataset, pair_by_name, pair_from_list
from ovs.data.datamodule import SegDataModule
from ovs.data.io import require_path

D2_SPLITS = {"train": "training", "val": "validation"}


class _PascalD2(SemanticSegDataset):
    """A dataset of ``<base>/images/<split>/*.jpg`` with labels in ``<base>/<annotations>/<split>/*<suffix>``."""

    base_dir: str = ""
    annotations_dir: str = ""
    label_suffix: str = ".png"
    splits = D2_SPLITS

    def _find_files(self) -> list[tuple[Path, Path]]:
        base = require_path(self.root / self.base_dir, f"{self.name} root", self.prepare_script)
        split = self.split_dir(self.split)
        return pair_by_name(
            base / self.annotations_dir / split, base / "images" / split, self.label_suffix, ".jpg",
            self.prepare_script,
        )  # fmt: skip


class PascalVOC21(_PascalD2):
    """PASCAL VOC 2012 with background (21 classes, background index 0)."""

    name = "voc21"
    num_classes = 21
    default_class_names = "voc21"
    background_index = 0
    base_dir = "pascal_voc_d2"
    annotations_dir = "annotations_pascal21"
    prepare_script = "prepare_pascal_voc.py"


class PascalVOC20(_PascalD2):
    """PASCAL VOC 2012 without background (20 classes; background is ignored)."""

    name = "voc20"
    num_classes = 20
    default_class_names = "voc20"
    base_dir = "pascal_voc_d2"
    annotations_dir = "annotations_pascal20"
    prepare_script = "prepare_pascal_voc.py"


class PascalContext59(_PascalD2):
    """PASCAL Context 59 most frequent classes (background ignored)."""

    name = "pc59"
    num_classes = 59
    default_class_names = "pc59"
    base_dir = "pascal_ctx_d2"
    annotations_dir = "annotations_ctx59"
    prepare_script = "prepare_pascal_context.py"


class PascalContext459(_PascalD2):
    """PASCAL Context full 459 classes: uint16 TIFF labels, 65535 ignore."""

    name = "pc459"
    num_classes = 459
    default_class_names = "pc459"
    base_dir = "pascal_ctx_d2"
    annotations_dir = "annotations_ctx459"
    label_suffix = ".tif"
    ignore_values = (65535,)
    prepare_script = "prepare_pascal_context.py"


class PascalContext60(SemanticSegDataset):
    """PASCAL Context 60 (mmseg ``PascalContext60Dataset``: 0 = background, 1..59, ``reduce_zero_label`` off)."""

    name = "pc60"
    num_classes = 60
    default_class_names = "sclip_context60"
    background_index = 0
    splits = {"train": "train", "val": "val"}
    prepare_script = "prepare_pascal_context.py"

    def _find_files(self) -> list[tuple[Path, Path]]:
        base = require_path(self.root / "VOCdevkit" / "VOC2010", "PASCAL VOC 2010 root", self.prepare_script)
        return pair_from_list(
            base / "ImageSets" / "SegmentationContext" / f"{self.split_dir(self.split)}.txt",
            base / "JPEGImages",
            base / "SegmentationClassContext",
            ".jpg",
            ".png",
            self.prepare_script,
        )


class PascalVOCDataModule(SegDataModule):
    """PASCAL VOC 2012 evaluation: ``variant`` ``"20"`` (no background) or ``"21"`` (background 0)."""

    def __init__(self, variant: str | int = "21", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        classes: dict[str, type[SegmentationDataset]] = {"20": PascalVOC20, "21": PascalVOC21}
        if str(variant) not in classes:
            raise ValueError(f"PASCAL VOC variant must be '20' or '21', got {variant!r}.")
        self.variant = str(variant)
        self.dataset_class = classes[self.variant]


class PascalContextDataModule(SegDataModule):
    """PASCAL Context evaluation: ``variant`` ``"59"``, ``"60"`` (with background) or ``"459"``."""

    def __init__(self, variant: str | int = "59", **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        classes: dict[str, type[SegmentationDataset]] = {
            "59": PascalContext59,
            "60": PascalContext60,
            "459": PascalContext459,
        }
        if str(variant) not in classes:
            raise ValueError(f"PASCAL Context variant must be '59', '60' or '459', got {variant!r}.")
        self.variant = str(variant)
        self.dataset_class = classes[self.variant]

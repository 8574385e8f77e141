"""COCO: COCO-Panoptic 133 (training + evaluation), COCO-Stuff 171 (training + evaluation) and COCO-Object
(80 things + background, evaluation), in the detectron2 / TCL layouts (maskclippp.md §7.2, training-free.md §2.5).

```
coco/{train2017,val2017}/*.jpg
coco/annotations/panoptic_{train2017,val2017}.json, coco/panoptic_{train2017,val2017}/*.png   (download)
coco/panoptic_semseg_{train2017,val2017}/*.png       uint8 0..132, 255 void   (prepare_coco_panoptic.py)
coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png  uint8 0..170, 255   (prepare_coco_stuff.py)
coco_object/images/val2017/*.jpg
coco_object/annotations/val2017/*_instanceTrainIds.png   uint8 0 = background, 1..80 (prepare_coco_object.py)
```
"""

from __future__ import annotations

import os
from pathlib import Path

from ovs.data.base import (
    ClassNamesArg,
    ImageTransform,
    PanopticSegDataset,
    SampleTransform,
    SemanticSegDataset,
    pair_by_name,
)
from ovs.data.datamodule import SegDataModule
from ovs.data.io import require_path, resolve_root
from ovs.data.transforms import coco_stuff_transform, lsj_transform

COCO_SPLITS = {"train": "train2017", "val": "val2017"}

COCO_THING_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
"""COCO category ids of the 80 thing classes."""

COCO_STUFF_171_IDS: tuple[int, ...] = COCO_THING_IDS + tuple(range(92, 183))
"""COCO category ids of the 171 COCO-Stuff classes (80 things + 91 stuff); contiguous id = position."""

COCO_PANOPTIC_CATEGORY_IDS: tuple[int, ...] = COCO_THING_IDS + (
    92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147, 148, 149, 151, 154,
    155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, 184, 185, 186, 187, 188, 189, 190, 191, 192,
    193, 194, 195, 196, 197, 198, 199, 200,
)  # fmt: skip
"""COCO panoptic category ids of the 133 classes (80 things + 53 stuff); contiguous id = position."""


class COCOPanoptic(PanopticSegDataset):
    """COCO-Panoptic 133 classes (80 things, 53 stuff), contiguous ids 0..132 in category-id order.

    Evaluation reads ``sem_seg`` from ``panoptic_semseg_val2017``; training derives it from the panoptic map, so
    training needs only the downloaded panoptic JSON + PNGs.
    """

    name = "coco_panoptic"
    num_classes = 133
    default_class_names = "coco_panoptic"
    splits = COCO_SPLITS
    prepare_script = None  # the panoptic PNG + JSON are downloads

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        class_names: ClassNamesArg = None,
        transforms: SampleTransform | None = None,
        image_transform: ImageTransform | None = None,
    ) -> None:
        base = require_path(resolve_root(root) / "coco", "COCO root", None)
        directory = self.split_dir(split)
        super().__init__(
            json_file=base / "annotations" / f"panoptic_{directory}.json",
            panoptic_dir=base / f"panoptic_{directory}",
            image_dir=base / directory,
            semseg_dir=base / f"panoptic_semseg_{directory}" if split == "val" else None,
            root=root,
            split=split,
            class_names=class_names,
            transforms=transforms,
            image_transform=image_transform,
            semseg_script="prepare_coco_panoptic.py",
        )


class COCOStuff(SemanticSegDataset):
    """COCO-Stuff-164k with the 171 used classes (ids 0..170, 255 ignore)."""

    name = "coco_stuff"
    num_classes = 171
    default_class_names = "coco_stuff"
    splits = COCO_SPLITS
    prepare_script = "prepare_coco_stuff.py"

    def _find_files(self) -> list[tuple[Path, Path]]:
        base = require_path(self.root / "coco", "COCO root", self.prepare_script)
        split = self.split_dir(self.split)
        return pair_by_name(
            base / "stuffthingmaps_detectron2" / split, base / split, ".png", ".jpg", self.prepare_script
        )


class COCOObject(SemanticSegDataset):
    """COCO-Object: 0 = background (stuff and unlabeled), 1..80 = COCO things (GroupViT/TCL converter)."""

    name = "coco_object"
    num_classes = 81
    default_class_names = "sclip_coco_object"
    background_index = 0
    splits = COCO_SPLITS
    prepare_script = "prepare_coco_object.py"

    def _find_files(self) -> list[tuple[Path, Path]]:
        base = require_path(self.root / "coco_object", "COCO-Object root", self.prepare_script)
        split = self.split_dir(self.split)
        return pair_by_name(
            base / "annotations" / split, base / "images" / split, "_instanceTrainIds.png", ".jpg", self.prepare_script
        )


class COCOPanopticDataModule(SegDataModule):
    """COCO-Panoptic: training with large-scale jitter (``image_size`` per backbone: 1024 ConvNeXt/RN, 512 EVA-B,
    448 EVA-L/g), evaluation on val2017 (PQ, mIoU)."""

    dataset_class = COCOPanoptic

    def __init__(
        self, image_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.image_size, self.min_scale, self.max_scale = image_size, min_scale, max_scale

    @property
    def is_thing(self) -> list[bool]:
        """80 things (contiguous ids 0..79) then 53 stuff classes."""
        return [index < 80 for index in range(133)]

    def build_train_dataset(self) -> COCOPanoptic:
        transform = lsj_transform(self.image_size, self.min_scale, self.max_scale)
        return COCOPanoptic(self.root, "train", self.class_names_arg, transforms=transform)


class COCOStuffDataModule(SegDataModule):
    """COCO-Stuff-171: training with short-side jitter + crop + colour + flip (``image_size`` S: 1024 ConvNeXt-B,
    448 EVA-L), evaluation on val2017."""

    dataset_class = COCOStuff

    def __init__(self, image_size: int = 1024, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.image_size = image_size

    def build_train_dataset(self) -> COCOStuff:
        return COCOStuff(self.root, "train", self.class_names_arg, transforms=coco_stuff_transform(self.image_size))


class COCOObjectDataModule(SegDataModule):
    """COCO-Object evaluation (val2017, 81 classes with background 0)."""

    dataset_class = COCOObject

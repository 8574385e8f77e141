"""Cityscapes fine annotations with the 19 train ids (training-free.md §2.5; maskclippp.md §7.4 Table 8).

```
cityscapes/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
cityscapes/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png   0..18, 255 ignore (prepare_cityscapes.py)
```
"""

from __future__ import annotations

from pathlib import Path

from ovs.data.base import SemanticSegDataset, pair_by_name
from ovs.data.datamodule import SegDataModule
from ovs.data.io import require_path


class Cityscapes(SemanticSegDataset):
    """Cityscapes semantic segmentation, 19 evaluation classes."""

    name = "cityscapes"
    num_classes = 19
    default_class_names = "cityscapes"
    splits = {"train": "train", "val": "val"}
    prepare_script = "prepare_cityscapes.py"

    def _find_files(self) -> list[tuple[Path, Path]]:
        base = require_path(self.root / "cityscapes", "Cityscapes root", self.prepare_script)
        split = self.split_dir(self.split)
        return pair_by_name(
            base / "gtFine" / split,
            base / "leftImg8bit" / split,
            "_gtFine_labelTrainIds.png",
            "_leftImg8bit.png",
            self.prepare_script,
            recursive=True,
        )

    def _image_id(self, index: int) -> str:
        return self.files[index][0].name[: -len("_leftImg8bit.png")]


class CityscapesDataModule(SegDataModule):
    """Cityscapes evaluation (500 val images)."""

    dataset_class = Cityscapes

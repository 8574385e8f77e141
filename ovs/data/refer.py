"""Referring-expression datasets in their standard on-disk formats (MaskInversion paper §4.1 (a), App. B; maskinversion
spec §9): RefCOCO / RefCOCO+ / RefCOCOg (REFER API files) and PhraseCut (VGPhraseCut).

One sample per image, with every expression of the split on that image:

| key | type | meaning |
|---|---|---|
| ``image`` | ``uint8 [3, H, W]`` | RGB |
| ``masks`` | ``bool [M, H, W]`` | candidates: the image's COCO annotations (RefCOCO), its phrases' masks (PhraseCut) |
| ``expressions`` | ``list[str]`` | every sentence (RefCOCO: each sentence of each ref is its own query) |
| ``targets`` | ``int64 [E]`` | index of each expression's ground-truth candidate |
| ``meta`` | ``dict`` | ``file_name``, ``height``, ``width``, ``dataset``, ``image_id`` |

Layouts under the datasets root (``$DETECTRON2_DATASETS`` or ``./datasets``):

```
refcoco/refs(unc).p  refcoco/instances.json          (refcoco+: refs(unc).p, refcocog: refs(umd).p)
coco/train2014/COCO_train2014_<id>.jpg               (the images of all three)
phrasecut/refer_<split>.json  phrasecut/images/<image_id>.jpg
```

The refs pickle is read with a restricted unpickler that refuses every global (the file holds only lists, dicts,
strings and numbers), never with plain ``pickle.load``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ovs.data.collate import list_collate
from ovs.data.io import read_image

REFCOCO_VARIANTS = {"refcoco": ("refcoco", "unc"), "refcoco+": ("refcoco+", "unc"), "refcocog": ("refcocog", "umd")}


def default_root() -> Path:
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


class _PlainDataUnpickler(pickle.Unpickler):
    """Unpickler that accepts only built-in containers and scalars: any global (class, function) is refused."""

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"{self.path}: refused to load the global {module}.{name}; a REFER refs pickle holds only lists, dicts, "
            "strings and numbers. Re-download the file from the REFER release."
        )


def load_refs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The REFER ``refs(<split_by>).p`` list, read with the restricted unpickler."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: download the REFER annotations (refs pickle + instances.json).")
    with path.open("rb") as f:
        refs = _PlainDataUnpickler(f, path).load()
    if not isinstance(refs, list):
        raise ValueError(f"{path} should hold a list of refs, got {type(refs).__name__}.")
    return refs


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Union of COCO-style flat polygons ``[x0, y0, x1, y1, ...]``, ``bool [H, W]`` (pycocotools rasterisation)."""
    from pycocotools import mask as mask_utils

    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(polygons, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, RLE or uncompressed RLE) as ``bool [H, W]``."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    rle = segmentation
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


class RefCOCO(Dataset[dict[str, Any]]):
    """RefCOCO / RefCOCO+ / RefCOCOg through the REFER files (spec §9).

    Args:
        root: datasets root.
        variant: ``refcoco``, ``refcoco+`` or ``refcocog``.
        split: REFER split (``val``, ``testA``, ``testB``, ``test``).
        image_dir: folder of the COCO train2014 images, relative to ``root``.
    """

    def __init__(
        self, root: str | os.PathLike[str] | None = None, variant: str = "refcoco", split: str = "val",
        image_dir: str = "coco/train2014",
    ) -> None:
        if variant not in REFCOCO_VARIANTS:
            raise ValueError(f"variant must be one of {tuple(REFCOCO_VARIANTS)}, got {variant!r}.")
        self.root = Path(root) if root is not None else default_root()
        folder, split_by = REFCOCO_VARIANTS[variant]
        self.name = variant
        self.image_dir = self.root / image_dir
        refs = [r for r in load_refs(self.root / folder / f"refs({split_by}).p") if r["split"] == split]
        if not refs:
            raise ValueError(f"No refs of split {split!r} in {self.root / folder}; splits: val, testA, testB, test.")
        instances_file = self.root / folder / "instances.json"
        if not instances_file.is_file():
            raise FileNotFoundError(f"{instances_file} is missing: it comes with the REFER annotations.")
        instances = json.loads(instances_file.read_text())
        self.images = {img["id"]: img for img in instances["images"]}
        self.annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in instances["annotations"]:
            self.annotations[ann["image_id"]].append(ann)
        by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ref in refs:
            by_image[ref["image_id"]].append(ref)
        self.image_ids = sorted(by_image)
        self.refs = by_image

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self.images[image_id]
        h, w = info["height"], info["width"]
        anns = self.annotations[image_id]
        masks = torch.from_numpy(np.stack([segmentation_to_mask(a["segmentation"], h, w) for a in anns]))
        position = {a["id"]: i for i, a in enumerate(anns)}
        expressions, targets = [], []
        for ref in self.refs[image_id]:
            for sentence in ref["sentences"]:
                expressions.append(sentence["sent"])
                targets.append(position[ref["ann_id"]])
        meta = {"file_name": info["file_name"], "height": h, "width": w, "dataset": self.name, "image_id": image_id}
        return {"image": read_image(self.image_dir / info["file_name"]), "masks": masks, "expressions": expressions,
                "targets": torch.tensor(targets, dtype=torch.int64), "meta": meta}


class PhraseCut(Dataset[dict[str, Any]]):
    """PhraseCut (VGPhraseCut ``refer_<split>.json``): each phrase's mask is the union of its instances' polygons;
    the candidates of an image are the masks of all its phrases (spec §4 (a)).

    Args:
        root: datasets root.
        split: ``test``, ``val``, ``miniv`` or ``train``.
    """

    name = "phrasecut"

    def __init__(self, root: str | os.PathLike[str] | None = None, split: str = "test") -> None:
        self.root = (Path(root) if root is not None else default_root()) / "phrasecut"
        path = self.root / f"refer_{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: download VGPhraseCut and its Visual Genome images.")
        by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for task in json.loads(path.read_text()):
            by_image[task["image_id"]].append(task)
        self.image_ids = sorted(by_image)
        self.tasks = by_image

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        image = read_image(self.root / "images" / f"{image_id}.jpg")
        h, w = image.shape[-2:]
        tasks = self.tasks[image_id]
        masks = torch.from_numpy(np.stack([_phrase_mask(t["Polygons"], h, w) for t in tasks]))
        meta = {"file_name": f"{image_id}.jpg", "height": h, "width": w, "dataset": self.name, "image_id": image_id}
        return {"image": image, "masks": masks, "expressions": [t["phrase"] for t in tasks],
                "targets": torch.arange(len(tasks)), "meta": meta}


def _phrase_mask(instances: list[list[list[list[float]]]], height: int, width: int) -> np.ndarray:
    """Union of a phrase's instances; each instance is a list of polygons of ``[x, y]`` points."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygons in instances:
        for polygon in polygons:
            if len(polygon) >= 3:
                draw.polygon([tuple(p) for p in polygon], fill=1)
    return np.asarray(canvas, dtype=bool)


class ReferringDataModule(LightningDataModule):
    """Test DataModule of a referring-expression dataset (batch of one image, list collation).

    Args:
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or ``phrasecut``.
        root: datasets root.
        split: dataset split (RefCOCO default ``val``, PhraseCut ``test``).
        num_workers: DataLoader workers.
    """

    def __init__(
        self, dataset: str = "refcoco", root: str | os.PathLike[str] | None = None, split: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in (*REFCOCO_VARIANTS, "phrasecut"):
            raise ValueError(f"dataset must be one of {(*REFCOCO_VARIANTS, 'phrasecut')}, got {dataset!r}.")
        self.name = dataset
        self.root = root
        self.split = split or ("test" if dataset == "phrasecut" else "val")
        self.num_workers = num_workers
        self.test_dataset: Dataset[dict[str, Any]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.name == "phrasecut":
            self.test_dataset = PhraseCut(self.root, self.split)
        else:
            self.test_dataset = RefCOCO(self.root, self.name, self.split)

    def test_dataloader(self) -> DataLoader[Any]:
        if self.test_dataset is None:
            self.setup("test")
        return DataLoader(self.test_dataset, batch_size=1, num_workers=self.num_workers, collate_fn=list_collate)


def gt_masks(sample: dict[str, Any]) -> Tensor:
    """Ground-truth mask of every expression, ``bool [E, H, W]``."""
    return sample["masks"][sample["targets"]]

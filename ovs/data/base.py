"""Dataset base classes shared by every benchmark family (docs/architecture.md, "Dataset contract").

* :class:`SemanticSegDataset`: image + semantic label map pairs (every evaluation benchmark, COCO-Stuff training).
* :class:`PanopticSegDataset`: COCO-format panoptic PNG + JSON (COCO-Panoptic, ADE20K panoptic).
* :class:`InstanceSegDataset`: COCO-format instance JSON (ADE20K instance).

Subclasses only say where the files are (``_find_files`` / constructor arguments); loading, ignore-value mapping,
validation, test-time resizing and training transforms live here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ovs.data.class_names import load_class_names
from ovs.data.constants import IGNORE_INDEX
from ovs.data.io import (
    DatasetFormatError,
    DatasetNotFoundError,
    check_same_size,
    prepare_hint,
    read_image,
    read_json,
    read_label,
    read_panoptic,
    require_path,
    resolve_root,
)
from ovs.data.sampler import augmentation_generator
from ovs.data.transforms import Sample, panoptic_to_masks, sem_seg_to_masks

SampleTransform = Callable[[Sample, torch.Generator | None], Sample]
"""A training transform: ``(sample, generator)`` -> sample; ``generator`` seeds its randomness (``None``: global RNG)."""
ImageTransform = Callable[[torch.Tensor], torch.Tensor]
ClassNamesArg = str | os.PathLike[str] | Sequence[Sequence[str]] | None


def pair_by_name(
    label_dir: Path,
    image_dir: Path,
    label_suffix: str,
    image_suffix: str,
    script: str | None,
    recursive: bool = False,
) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs for every ``*<label_suffix>`` file of ``label_dir`` (sorted).

    The image of ``label_dir/<rel>/<stem><label_suffix>`` is ``image_dir/<rel>/<stem><image_suffix>``; a missing
    image raises :class:`DatasetNotFoundError` naming it.
    """
    require_path(label_dir, "Label directory", script)
    require_path(image_dir, "Image directory", script)
    pattern = f"**/*{label_suffix}" if recursive else f"*{label_suffix}"
    labels = sorted(label_dir.glob(pattern))
    if not labels:
        raise DatasetNotFoundError(f"No label files matching {label_dir / pattern}. {prepare_hint(script)}")
    pairs = []
    for label in labels:
        relative = label.relative_to(label_dir)
        stem = relative.name[: -len(label_suffix)]
        image = image_dir / relative.parent / f"{stem}{image_suffix}"
        if not image.is_file():
            raise DatasetNotFoundError(f"Image {image} of label {label} is missing. {prepare_hint(script)}")
        pairs.append((image, label))
    return pairs


def pair_from_list(
    list_file: Path,
    image_dir: Path,
    label_dir: Path,
    image_suffix: str,
    label_suffix: str,
    script: str | None,
) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs for the ids listed one per line in ``list_file`` (mmseg ``ann_file`` layout)."""
    require_path(list_file, "Split list", script)
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetFormatError(f"Split list {list_file} is empty. {prepare_hint(script)}")
    pairs = []
    for stem in ids:
        image, label = image_dir / f"{stem}{image_suffix}", label_dir / f"{stem}{label_suffix}"
        for path, what in ((image, "Image"), (label, "Label map")):
            if not path.is_file():
                raise DatasetNotFoundError(f"{what} {path} listed in {list_file} is missing. {prepare_hint(script)}")
        pairs.append((image, label))
    return pairs


class SegmentationDataset(Dataset[Sample]):
    """Common attributes and sample finishing of every dataset.

    Attributes (docs/architecture.md): ``name``, ``class_names`` (synonyms per class), ``ignore_index`` (always
    ``IGNORE_INDEX``), ``background_index`` and ``num_classes``.

    Args:
        root: datasets root (``None``: ``$DETECTRON2_DATASETS`` or ``./datasets``).
        split: ``"train"`` or ``"val"``.
        class_names: packaged file name, path, or list of synonym lists; default ``default_class_names``. It must
            have exactly ``num_classes`` classes (names only change the vocabulary, not the label ids).
        transforms: training transform of the whole sample (``ovs.data.transforms``); labels are transformed too.
        image_transform: test-time image-only transform (e.g. ``resize_short_side``); labels keep their size.
    """

    name: str = ""
    num_classes: int = 0
    default_class_names: str = ""
    background_index: int | None = None
    splits: dict[str, str] = {"train": "train", "val": "val"}
    prepare_script: str | None = None

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        class_names: ClassNamesArg = None,
        transforms: SampleTransform | None = None,
        image_transform: ImageTransform | None = None,
    ) -> None:
        self.split_dir(split)
        if transforms is not None and image_transform is not None:
            raise ValueError("Pass either training `transforms` or a test-time `image_transform`, not both.")
        self.root = resolve_root(root)
        self.split = split
        self.ignore_index = IGNORE_INDEX
        self.class_names = self._resolve_class_names(class_names)
        self.transforms = transforms
        self.image_transform = image_transform

    @classmethod
    def split_dir(cls, split: str) -> str:
        """On-disk directory name of ``split`` (e.g. ``"val"`` -> ``"validation"`` for ADE20K)."""
        if split not in cls.splits:
            raise ValueError(f"{cls.__name__}: unknown split {split!r}; choose one of {sorted(cls.splits)}.")
        return cls.splits[split]

    def _resolve_class_names(self, class_names: ClassNamesArg) -> list[list[str]]:
        if class_names is None:
            names = load_class_names(self.default_class_names)
        elif isinstance(class_names, (str, os.PathLike)):
            names = load_class_names(class_names)
        else:
            names = [list(synonyms) for synonyms in class_names]
        if len(names) != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} has {self.num_classes} classes but the class names {class_names!r} "
                f"list {len(names)}."
            )
        return names

    def _meta(self, image_path: Path, image: torch.Tensor, image_id: Any) -> dict[str, Any]:
        return {
            "file_name": str(image_path),
            "height": int(image.shape[-2]),
            "width": int(image.shape[-1]),
            "dataset": self.name,
            "image_id": image_id,
        }

    def _finish(self, sample: Sample, index: int) -> Sample:
        """Apply the training transform (seeded by ``index`` when it is a :class:`~ovs.data.sampler.SeededIndex`) or
        the test-time image transform (labels and meta keep their size)."""
        if self.transforms is not None:
            return self.transforms(sample, augmentation_generator(index))
        if self.image_transform is not None:
            sample = dict(sample)
            sample["image"] = self.image_transform(sample["image"])
        return sample


class SemanticSegDataset(SegmentationDataset):
    """Image + semantic label map pairs; ``ignore_values`` are the on-disk ignore values.

    Training (``transforms`` given) adds ``masks`` / ``mask_labels``: one mask per class present after the
    transform, ignore excluded (maskclippp.md §7.5, COCO-Stuff).
    """

    ignore_values: tuple[int, ...] = (255,)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        class_names: ClassNamesArg = None,
        transforms: SampleTransform | None = None,
        image_transform: ImageTransform | None = None,
    ) -> None:
        super().__init__(root, split, class_names, transforms, image_transform)
        self.files = self._find_files()

    def _find_files(self) -> list[tuple[Path, Path]]:
        """``(image, label)`` pairs of the split, sorted."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.files)

    def load_semantic(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [3, H, W]`` image and ``int64 [H, W]`` labels of sample ``index``, validated."""
        image_path, label_path = self.files[index]
        image = read_image(image_path)
        label = read_label(label_path, self.num_classes, self.ignore_values, self.prepare_script)
        check_same_size(image, label, image_path, label_path)
        return image, label

    def __getitem__(self, index: int) -> Sample:
        image, sem_seg = self.load_semantic(index)
        image_path = self.files[index][0]
        sample: Sample = {"image": image, "sem_seg": sem_seg}
        meta = self._meta(image_path, image, self._image_id(index))
        sample = self._finish(sample, index)
        if self.transforms is not None:
            sample["masks"], sample["mask_labels"] = sem_seg_to_masks(sample["sem_seg"], self.num_classes)
        sample["meta"] = meta
        return sample

    def _image_id(self, index: int) -> str:
        return self.files[index][0].stem


class PanopticSegDataset(SegmentationDataset):
    """COCO-format panoptic annotations: ``<json>`` + one RGB-encoded PNG per image (segment id = R + 256 G +
    256^2 B, 0 = void), category ids made contiguous by sorting the JSON categories by id.

    A sample has ``pan_seg``, ``segments_info`` (``id``, contiguous ``category_id``, ``iscrowd``, ``isthing``),
    ``masks`` / ``mask_labels`` of the non-crowd segments, and ``sem_seg``: read from ``semseg_dir`` when given
    (evaluation, as the reference registers it), otherwise derived from the panoptic map (void -> ignore, crowd
    regions keep their class, as ``prepare_coco_semantic_annos_from_panoptic_annos.py``). With training
    ``transforms`` the panoptic id map is transformed (nearest, void padding) and masks emptied by the crop are
    dropped (maskclippp.md §7.5).
    """

    image_suffix: str = ".jpg"

    def __init__(
        self,
        json_file: Path,
        panoptic_dir: Path,
        image_dir: Path,
        semseg_dir: Path | None,
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        class_names: ClassNamesArg = None,
        transforms: SampleTransform | None = None,
        image_transform: ImageTransform | None = None,
        semseg_script: str | None = None,
    ) -> None:
        super().__init__(root, split, class_names, transforms, image_transform)
        script = self.prepare_script
        data = read_json(json_file, script)
        categories = sorted(data.get("categories", []), key=lambda c: c["id"])
        if len(categories) != self.num_classes:
            raise DatasetFormatError(
                f"{json_file} lists {len(categories)} categories; {type(self).__name__} expects {self.num_classes}."
            )
        self.category_to_contiguous = {c["id"]: index for index, c in enumerate(categories)}
        self.is_thing = [bool(c.get("isthing", 0)) for c in categories]
        self.panoptic_dir = require_path(panoptic_dir, "Panoptic PNG directory", script)
        self.image_dir = require_path(image_dir, "Image directory", script)
        self.semseg_dir = (
            None if semseg_dir is None else require_path(semseg_dir, "Semantic label directory", semseg_script)
        )
        self.semseg_script = semseg_script
        self.json_file = json_file
        self.annotations = sorted(data["annotations"], key=lambda a: a["file_name"])
        if not self.annotations:
            raise DatasetNotFoundError(f"{json_file} has no annotations. {prepare_hint(script)}")

    def __len__(self) -> int:
        return len(self.annotations)

    def _segments(self, annotation: dict[str, Any]) -> list[dict[str, Any]]:
        segments = []
        for segment in annotation["segments_info"]:
            if segment["category_id"] not in self.category_to_contiguous:
                raise DatasetFormatError(
                    f"{self.json_file}: segment {segment['id']} of {annotation['file_name']} has unknown category "
                    f"{segment['category_id']}."
                )
            category = self.category_to_contiguous[segment["category_id"]]
            segments.append(
                {
                    "id": int(segment["id"]),
                    "category_id": category,
                    "iscrowd": int(segment.get("iscrowd", 0)),
                    "isthing": self.is_thing[category],
                }
            )
        return segments

    def __getitem__(self, index: int) -> Sample:
        annotation = self.annotations[index]
        stem = Path(annotation["file_name"]).stem
        image_path = self.image_dir / f"{stem}{self.image_suffix}"
        panoptic_path = self.panoptic_dir / annotation["file_name"]
        image = read_image(image_path)
        pan_seg = read_panoptic(panoptic_path)  # [H, W]
        check_same_size(image, pan_seg, image_path, panoptic_path)
        segments = self._segments(annotation)
        ids = torch.tensor([s["id"] for s in segments], dtype=torch.int64)  # [S]
        labels = torch.tensor([s["category_id"] for s in segments], dtype=torch.int64)  # [S]
        if self.semseg_dir is not None:
            semseg_path = self.semseg_dir / f"{stem}.png"
            sem_seg = read_label(semseg_path, self.num_classes, (255,), script=self.semseg_script)
            check_same_size(image, sem_seg, image_path, semseg_path)
        else:
            sem_seg = panoptic_to_semantic(pan_seg, ids, labels)
        meta = self._meta(image_path, image, annotation["image_id"])
        sample = self._finish({"image": image, "sem_seg": sem_seg, "pan_seg": pan_seg}, index)
        not_crowd = torch.tensor([s["iscrowd"] == 0 for s in segments], dtype=torch.bool)
        sample["masks"], sample["mask_labels"] = panoptic_to_masks(
            sample["pan_seg"], ids[not_crowd], labels[not_crowd]
        )
        sample["segments_info"] = segments
        sample["meta"] = meta
        return sample


def panoptic_to_semantic(pan_seg: torch.Tensor, segment_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``int64 [H, W]`` class map from a panoptic id map: pixel of segment ``segment_ids[i]`` -> ``labels[i]``,
    void / unlisted ids -> IGNORE_INDEX."""
    sem_seg = torch.full_like(pan_seg, IGNORE_INDEX)
    if segment_ids.numel() == 0:
        return sem_seg
    order = torch.argsort(segment_ids)
    sorted_ids = segment_ids[order]
    position = torch.searchsorted(sorted_ids, pan_seg).clamp_(max=len(sorted_ids) - 1)  # [H, W]
    found = sorted_ids[position] == pan_seg
    return torch.where(found, labels[order][position], sem_seg)


class InstanceSegDataset(SegmentationDataset):
    """COCO-format instance annotations (RLE or polygons) decoded with pycocotools.

    A sample has ``masks`` (``bool [N, H, W]``), ``mask_labels`` (contiguous ids via ``category_to_contiguous``),
    ``segments_info`` (``id`` = annotation id, ``category_id``, ``iscrowd``, ``isthing``) and, when ``semseg_dir``
    is given, ``sem_seg``.
    """

    def __init__(
        self,
        json_file: Path,
        image_dir: Path,
        semseg_dir: Path | None,
        category_to_contiguous: dict[int, int],
        root: str | os.PathLike[str] | None = None,
        split: str = "val",
        class_names: ClassNamesArg = None,
        image_transform: ImageTransform | None = None,
    ) -> None:
        super().__init__(root, split, class_names, None, image_transform)
        script = self.prepare_script
        data = read_json(json_file, script)
        self.json_file = json_file
        self.image_dir = require_path(image_dir, "Image directory", script)
        self.semseg_dir = None if semseg_dir is None else require_path(semseg_dir, "Semantic label directory", script)
        self.category_to_contiguous = category_to_contiguous
        self.images = sorted(data["images"], key=lambda i: i["file_name"])
        if not self.images:
            raise DatasetNotFoundError(f"{json_file} lists no images. {prepare_hint(script)}")
        self.annotations: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in self.images}
        for annotation in data.get("annotations", []):
            if annotation["category_id"] not in category_to_contiguous:
                raise DatasetFormatError(
                    f"{json_file}: annotation {annotation['id']} has unknown category {annotation['category_id']}."
                )
            self.annotations[annotation["image_id"]].append(annotation)

    def __len__(self) -> int:
        return len(self.images)

    def _decode(self, annotation: dict[str, Any], height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        return mask_utils.decode(rle).astype(bool)  # [H, W]

    def __getitem__(self, index: int) -> Sample:
        info = self.images[index]
        image_path = self.image_dir / info["file_name"]
        image = read_image(image_path)
        height, width = image.shape[-2:]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise DatasetFormatError(
                f"Image {image_path} is {(height, width)} but {self.json_file} says {(info['height'], info['width'])}."
            )
        annotations = self.annotations[info["id"]]
        masks = torch.from_numpy(
            np.stack([self._decode(a, height, width) for a in annotations])
            if annotations
            else np.zeros((0, height, width), dtype=bool)
        )  # [N, H, W]
        labels = torch.tensor([self.category_to_contiguous[a["category_id"]] for a in annotations], dtype=torch.int64)
        sample: Sample = {"image": image}
        if self.semseg_dir is not None:
            semseg_path = self.semseg_dir / f"{Path(info['file_name']).stem}.png"
            sample["sem_seg"] = read_label(semseg_path, self.num_classes, (255,), script=self.prepare_script)
            check_same_size(image, sample["sem_seg"], image_path, semseg_path)
        meta = self._meta(image_path, image, info["id"])
        sample = self._finish(sample, index)
        sample["masks"], sample["mask_labels"] = masks, labels
        sample["segments_info"] = [
            {"id": int(a["id"]), "category_id": int(label), "iscrowd": int(a.get("iscrowd", 0)), "isthing": True}
            for a, label in zip(annotations, labels.tolist())
        ]
        sample["meta"] = meta
        return sample


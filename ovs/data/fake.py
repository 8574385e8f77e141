"""Tiny fake datasets written in the exact on-disk layouts (like torchgeo's fake-data generators).

Every ``write_fake_*`` function writes images and annotations under ``root`` in the layout the matching Dataset
reads (docs/datasets.md) and returns the ground truth it wrote, so tests can compare what a Dataset loads against
independently known values. Label maps are blocky random class maps with at least one ignore block; images are
deterministic random RGB (JPEG where the real dataset uses JPEG). Nothing here is imported by ``ovs.data`` itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovs.data.ade20k import ADE20K_150_THING_IDS
from ovs.data.class_names import load_class_names
from ovs.data.coco import COCO_PANOPTIC_CATEGORY_IDS
from ovs.data.io import panoptic_id_to_rgb

PathLike = str | os.PathLike[str]
CELL = 8
"""Side of the constant blocks of fake label maps, in pixels."""


@dataclass
class FakePanoptic:
    """One fake panoptic annotation: segment ids ``[H, W]`` (0 = void) and its ``segments_info`` (JSON ids)."""

    ids: np.ndarray
    segments: list[dict[str, Any]]
    semantic: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    """Contiguous class per pixel, 255 for void (what the panoptic-to-semantic conversion writes)."""


def fake_image(index: int, height: int, width: int) -> np.ndarray:
    """Deterministic random RGB image ``uint8 [H, W, 3]`` for image number ``index``."""
    return np.random.default_rng(10_000 + index).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _blocks(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample a cell grid ``[h, w]`` to ``[height, width]`` by repeating each cell ``CELL`` times."""
    return np.repeat(np.repeat(values, CELL, axis=0), CELL, axis=1)[:height, :width]


def _grid(height: int, width: int) -> tuple[int, int]:
    return -(-height // CELL), -(-width // CELL)


def fake_label(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_classes: int,
    ignore_value: int | None,
    dtype: type[np.integer[Any]] = np.uint8,
    low: int = 0,
) -> np.ndarray:
    """Blocky label map with classes in ``[low, num_classes)`` and one block of ``ignore_value`` (if given)."""
    grid = rng.integers(low, num_classes, size=_grid(height, width))
    if ignore_value is not None:
        grid[rng.integers(grid.shape[0]), rng.integers(grid.shape[1])] = ignore_value
    return _blocks(grid, height, width).astype(dtype)


def _save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(array).save(path, quality=95)
    else:
        Image.fromarray(array).save(path)


def _save_label(path: Path, array: np.ndarray) -> None:
    """Save ``uint8`` as PNG and ``uint16`` as TIFF (PIL mode ``I;16``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_semantic_pairs(
    image_dir: Path,
    label_dir: Path,
    stems: Sequence[str],
    num_classes: int,
    ignore_value: int | None,
    height: int = 32,
    width: int = 48,
    image_suffix: str = ".jpg",
    label_suffix: str = ".png",
    dtype: type[np.integer[Any]] = np.uint8,
    seed: int = 0,
    low: int = 0,
) -> dict[str, np.ndarray]:
    """Write one image + label map per stem; returns ``{stem: label array as written}``."""
    rng = np.random.default_rng(seed)
    labels = {}
    for index, stem in enumerate(stems):
        _save_image(image_dir / f"{stem}{image_suffix}", fake_image(seed * 1000 + index, height, width))
        label = fake_label(rng, height, width, num_classes, ignore_value, dtype, low)
        _save_label(label_dir / f"{stem}{label_suffix}", label)
        labels[stem] = label
    return labels


def fake_panoptic(
    rng: np.random.Generator,
    height: int,
    width: int,
    category_ids: Sequence[int],
    is_thing: Sequence[bool],
    num_segments: int = 6,
    crowd: bool = False,
) -> FakePanoptic:
    """Random panoptic map: ``num_segments`` segments (half stuff, half things; the last thing crowd if ``crowd``)
    on a cell grid, some cells void. Segment ids are distinct in ``[1, 2^24)`` to exercise all three PNG bytes."""
    stuff = [i for i, thing in enumerate(is_thing) if not thing]
    things = [i for i, thing in enumerate(is_thing) if thing]
    n_stuff = num_segments // 2
    contiguous = list(rng.choice(stuff, size=n_stuff, replace=False)) + list(
        rng.choice(things, size=num_segments - n_stuff, replace=True)
    )
    segment_ids = rng.choice(np.arange(1, 2**24), size=num_segments, replace=False)
    grid_h, grid_w = _grid(height, width)
    if grid_h * grid_w < num_segments:
        raise ValueError(f"A {height}x{width} fake panoptic map has fewer than {num_segments} cells of {CELL} px.")
    cells = rng.integers(0, num_segments + 1, size=grid_h * grid_w)  # num_segments = void
    cells[rng.permutation(grid_h * grid_w)[:num_segments]] = np.arange(num_segments)  # every segment present
    lookup = np.append(segment_ids, 0)
    ids = _blocks(lookup[cells.reshape(grid_h, grid_w)], height, width).astype(np.int64)
    semantic = np.full((height, width), 255, dtype=np.uint8)
    segments = []
    for index, (segment_id, category) in enumerate(zip(segment_ids.tolist(), contiguous)):
        mask = ids == segment_id
        rows, cols = np.nonzero(mask)
        semantic[mask] = category
        segments.append(
            {
                "id": int(segment_id),
                "category_id": int(category_ids[category]),
                "iscrowd": int(crowd and index == num_segments - 1),
                "area": int(mask.sum()),
                "bbox": [int(cols.min()), int(rows.min()), int(np.ptp(cols) + 1), int(np.ptp(rows) + 1)],
            }
        )
    return FakePanoptic(ids=ids, segments=segments, semantic=semantic)


def _categories(category_ids: Sequence[int], is_thing: Sequence[bool], names: str) -> list[dict[str, Any]]:
    display = [synonyms[0] for synonyms in load_class_names(names)]
    return [
        {"id": int(c), "name": display[i], "isthing": int(is_thing[i]), "color": [0, 0, 0]}
        for i, c in enumerate(category_ids)
    ]


def _write_panoptic_split(
    json_file: Path,
    png_dir: Path,
    image_dir: Path,
    semseg_dir: Path | None,
    stems: Sequence[str],
    image_ids: Sequence[Any],
    categories: list[dict[str, Any]],
    height: int,
    width: int,
    seed: int,
    crowd: bool,
) -> dict[str, FakePanoptic]:
    rng = np.random.default_rng(seed)
    ids = [c["id"] for c in categories]
    is_thing = [bool(c["isthing"]) for c in categories]
    images, annotations, result = [], [], {}
    for index, (stem, image_id) in enumerate(zip(stems, image_ids)):
        _save_image(image_dir / f"{stem}.jpg", fake_image(seed * 1000 + index, height, width))
        pan = fake_panoptic(rng, height, width, ids, is_thing, crowd=crowd)
        _save_image(png_dir / f"{stem}.png", panoptic_id_to_rgb(pan.ids))
        if semseg_dir is not None:
            _save_label(semseg_dir / f"{stem}.png", pan.semantic)
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": pan.segments})
        result[stem] = pan
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return result


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@dataclass
class FakeADE20K:
    """Ground truth written by :func:`write_fake_ade20k`, per split (``"train"`` / ``"val"``)."""

    semantic: dict[str, dict[str, np.ndarray]]
    panoptic: dict[str, dict[str, FakePanoptic]]
    instance: dict[str, dict[str, Any]]


def write_fake_ade20k(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> FakeADE20K:
    """ADE20K-150 after ``prepare_ade20k.py``: images, ``annotations_detectron2`` (0..149, 255), panoptic JSON + PNGs
    and COCO-style instance JSON, for ``training`` and ``validation``. The semantic map of each image is the one its
    panoptic map implies (stuff and thing segments carry their class, void -> 255)."""
    base = Path(root) / "ADEChallengeData2016"
    is_thing = [i in ADE20K_150_THING_IDS for i in range(150)]
    categories = _categories(range(150), is_thing, "ade150")
    semantic, panoptic, instance = {}, {}, {}
    for offset, (split, directory) in enumerate((("train", "training"), ("val", "validation"))):
        stems = [f"ADE_{split}_{i + 1:08d}" for i in range(num_images)]
        pans = _write_panoptic_split(
            base / f"ade20k_panoptic_{split}.json",
            base / f"ade20k_panoptic_{split}",
            base / "images" / directory,
            base / "annotations_detectron2" / directory,
            stems,
            stems,
            categories,
            height,
            width,
            seed + offset,
            crowd=False,
        )
        annotations = []
        for stem, pan in pans.items():
            for segment in pan.segments:
                if is_thing[segment["category_id"]]:
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": stem,
                            "category_id": segment["category_id"],
                            "iscrowd": 0,
                            "segmentation": _rle(pan.ids == segment["id"]),
                            "area": segment["area"],
                            "bbox": segment["bbox"],
                        }
                    )
        instance_json = {
            "images": [{"id": s, "file_name": f"{s}.jpg", "height": height, "width": width} for s in stems],
            "annotations": annotations,
            "categories": [c for c in categories if c["isthing"]],
        }
        (base / f"ade20k_instance_{split}.json").write_text(json.dumps(instance_json))
        semantic[split] = {stem: pan.semantic for stem, pan in pans.items()}
        panoptic[split], instance[split] = pans, instance_json
    return FakeADE20K(semantic=semantic, panoptic=panoptic, instance=instance)


def write_fake_ade20k_full(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """ADE20K-847 after ``prepare_ade20k_full.py``: uint16 TIFF labels 0..846 with 65535 ignore."""
    base = Path(root) / "ADE20K_2021_17_01"
    out = {}
    for offset, (split, directory) in enumerate((("train", "training"), ("val", "validation"))):
        out[split] = write_semantic_pairs(
            base / "images_detectron2" / directory,
            base / "annotations_detectron2" / directory,
            [f"ADE_{split}_{i + 1:08d}" for i in range(num_images)],
            847,
            65535,
            height,
            width,
            label_suffix=".tif",
            dtype=np.uint16,
            seed=seed + offset,
        )
    return out


def _coco_stems(num_images: int, offset: int) -> list[str]:
    return [f"{offset + i + 1:012d}" for i in range(num_images)]


def write_fake_coco_panoptic(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, dict[str, FakePanoptic]]:
    """COCO panoptic download (``annotations/panoptic_*.json``, ``panoptic_*/*.png``, real category ids, one crowd
    segment per image) plus ``panoptic_semseg_*`` as ``prepare_coco_panoptic.py`` writes it."""
    base = Path(root) / "coco"
    categories = _categories(COCO_PANOPTIC_CATEGORY_IDS, [i < 80 for i in range(133)], "coco_panoptic")
    out = {}
    for offset, (split, directory) in enumerate((("train", "train2017"), ("val", "val2017"))):
        stems = _coco_stems(num_images, 1000 * offset)
        out[split] = _write_panoptic_split(
            base / "annotations" / f"panoptic_{directory}.json",
            base / f"panoptic_{directory}",
            base / directory,
            base / f"panoptic_semseg_{directory}",
            stems,
            [int(s) for s in stems],
            categories,
            height,
            width,
            seed + offset,
            crowd=True,
        )
    return out


def write_fake_coco_stuff(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """COCO-Stuff after ``prepare_coco_stuff.py``: ``coco/stuffthingmaps_detectron2/*2017/*.png`` (0..170, 255)."""
    base = Path(root) / "coco"
    out = {}
    for offset, (split, directory) in enumerate((("train", "train2017"), ("val", "val2017"))):
        out[split] = write_semantic_pairs(
            base / directory,
            base / "stuffthingmaps_detectron2" / directory,
            _coco_stems(num_images, 1000 * offset + 500),
            171,
            255,
            height,
            width,
            seed=seed + offset,
        )
    return out


def write_fake_coco_object(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, np.ndarray]:
    """COCO-Object val after ``prepare_coco_object.py``: ``*_instanceTrainIds.png`` with 0..80 and no ignore."""
    base = Path(root) / "coco_object"
    return write_semantic_pairs(
        base / "images" / "val2017",
        base / "annotations" / "val2017",
        _coco_stems(num_images, 0),
        81,
        None,
        height,
        width,
        label_suffix="_instanceTrainIds.png",
        seed=seed,
    )


def write_fake_pascal_voc(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """``pascal_voc_d2`` after ``prepare_pascal_voc.py``; returns ``{"21": {stem: label}, "20": {stem: label}}``
    for the validation split, where VOC-20 = VOC-21 - 1 with background and 255 kept at 255."""
    base = Path(root) / "pascal_voc_d2"
    stems = [f"2007_{i:06d}" for i in range(num_images)]
    voc21 = write_semantic_pairs(
        base / "images" / "validation", base / "annotations_pascal21" / "validation", stems, 21, 255, height, width,
        seed=seed,
    )  # fmt: skip
    voc20 = {}
    for stem, label in voc21.items():
        label20 = np.where((label == 0) | (label == 255), 255, label.astype(np.int64) - 1).astype(np.uint8)
        _save_label(base / "annotations_pascal20" / "validation" / f"{stem}.png", label20)
        voc20[stem] = label20
    return {"21": voc21, "20": voc20}


def write_fake_pascal_context(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """``pascal_ctx_d2`` (PC-59 PNG, PC-459 uint16 TIFF) and the mmseg VOC2010 layout of PC-60 (0 = background,
    with ``ImageSets/SegmentationContext/val.txt``), validation split; returns ``{"59"|"459"|"60": {stem: label}}``."""
    base = Path(root) / "pascal_ctx_d2"
    stems = [f"2008_{i:06d}" for i in range(num_images)]
    pc59 = write_semantic_pairs(
        base / "images" / "validation", base / "annotations_ctx59" / "validation", stems, 59, 255, height, width,
        seed=seed,
    )  # fmt: skip
    rng = np.random.default_rng(seed + 1)
    pc459 = {}
    for stem in stems:
        label = fake_label(rng, height, width, 459, 65535, np.uint16)
        _save_label(base / "annotations_ctx459" / "validation" / f"{stem}.tif", label)
        pc459[stem] = label
    voc2010 = Path(root) / "VOCdevkit" / "VOC2010"
    pc60 = write_semantic_pairs(
        voc2010 / "JPEGImages", voc2010 / "SegmentationClassContext", stems, 60, None, height, width, seed=seed + 2
    )
    split_list = voc2010 / "ImageSets" / "SegmentationContext" / "val.txt"
    split_list.parent.mkdir(parents=True, exist_ok=True)
    split_list.write_text("".join(f"{stem}\n" for stem in stems))
    return {"59": pc59, "459": pc459, "60": pc60}


def write_fake_cityscapes(
    root: PathLike, num_images: int = 2, height: int = 32, width: int = 48, seed: int = 0
) -> dict[str, np.ndarray]:
    """Cityscapes val with ``*_gtFine_labelTrainIds.png`` (0..18, 255) in per-city folders; keys are
    ``<city>/<stem>``."""
    base = Path(root) / "cityscapes"
    rng = np.random.default_rng(seed)
    out = {}
    for index in range(num_images):
        city = ("frankfurt", "lindau")[index % 2]
        stem = f"{city}_000000_{index:06d}"
        _save_image(base / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", fake_image(index, height, width))
        label = fake_label(rng, height, width, 19, 255)
        _save_label(base / "gtFine" / "val" / city / f"{stem}_gtFine_labelTrainIds.png", label)
        out[f"{city}/{stem}"] = label
    return out

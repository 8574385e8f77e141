"""Label conversions and file helpers behind ``tools/prepare_datasets/prepare_*.py`` (maskclippp.md §7.3,
training-free.md §2.5). The scripts stay thin: they list ``(source, destination)`` pairs and call
:func:`convert_all`, which skips outputs that already exist (idempotent), writes through a temporary file (an
interrupted run leaves no half-written output) and shows a ``rich`` progress bar.

Conversions are pure numpy functions on label arrays so that tests can check them against hand-computed values.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovs.data.ade20k import ADE20K_150_THING_IDS
from ovs.data.coco import COCO_STUFF_171_IDS, COCO_THING_IDS
from ovs.data.io import read_label_array, resolve_root

RESOURCES = Path(__file__).parent / "resources"

# ----------------------------------------------------------------------------------------------------------------
# Label conversions


def ade20k_semantic(raw: np.ndarray) -> np.ndarray:
    """ADE20K-150 ``annotations`` (0 = other, 1..150) -> detectron2 ids: ``raw - 1`` with 0 -> 255."""
    if raw.dtype != np.uint8:
        raise ValueError(f"ADE20K annotations are uint8, got {raw.dtype}.")
    return raw - np.uint8(1)  # uint8 wrap-around turns 0 into 255


def voc20_from_voc21(label: np.ndarray) -> np.ndarray:
    """PASCAL VOC-21 labels (0 = background, 1..20, 255) -> VOC-20: background -> 255, others - 1."""
    out = label.astype(np.int64) - 1
    out[(label == 0) | (label == 255)] = 255
    return out.astype(np.uint8)


def _lut(mapping: dict[int, int], default: int, size: int = 256) -> np.ndarray:
    """``uint8 [size]`` lookup table: ``mapping`` entries, ``default`` elsewhere."""
    table = np.full(size, default, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table


COCO_STUFF_LUT = _lut({coco_id - 1: index for index, coco_id in enumerate(COCO_STUFF_171_IDS)}, 255)
"""``stuffthingmaps`` value (COCO id - 1, 255 unlabeled) -> COCO-Stuff-171 id (255 elsewhere)."""

COCO_OBJECT_LUT = _lut({coco_id - 1: index + 1 for index, coco_id in enumerate(COCO_THING_IDS)}, 0)
"""``stuffthingmaps`` value -> COCO-Object id: things 1..80, stuff and unlabeled (255) -> 0 background."""


def coco_stuff_171(raw: np.ndarray) -> np.ndarray:
    """COCO-Stuff ``stuffthingmaps`` (0..181 = COCO id - 1, 255) -> 171 contiguous ids, 255 ignore."""
    return COCO_STUFF_LUT[raw]


def coco_object(raw: np.ndarray) -> np.ndarray:
    """COCO-Stuff ``stuffthingmaps`` -> COCO-Object (GroupViT/TCL ``cvt_coco_object.py``): no ignore value."""
    return COCO_OBJECT_LUT[raw]


def panoptic_to_semantic(
    ids: np.ndarray, segments: Sequence[dict[str, Any]], contiguous: dict[int, int]
) -> np.ndarray:
    """Panoptic ids ``[H, W]`` -> uint8 class map: every listed segment (crowd included) gets its contiguous
    category, void and unlisted ids 255 (Mask2Former ``prepare_coco_semantic_annos_from_panoptic_annos.py``)."""
    out = np.full(ids.shape, 255, dtype=np.uint8)
    if not segments:
        return out
    segment_ids = np.array([s["id"] for s in segments], dtype=np.int64)
    labels = np.array([contiguous[s["category_id"]] for s in segments], dtype=np.uint8)
    order = np.argsort(segment_ids)
    position = np.clip(np.searchsorted(segment_ids[order], ids), 0, len(order) - 1)
    found = segment_ids[order][position] == ids
    out[found] = labels[order][position][found]
    return out


PASCAL_CONTEXT_59_IDS: tuple[int, ...] = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158, 159,
    162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366, 368,
    397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
"""PASCAL-Context full label ids (1..459, ``labels.txt``) of the 59 frequent classes, in PC-59 order."""

PASCAL_CONTEXT_60_LUT = _lut({full: index + 1 for index, full in enumerate(PASCAL_CONTEXT_59_IDS)}, 0, size=460)
"""Full label (0..459) -> PC-60 id (0 = background / every other class, 1..59)."""


def pascal_context_labels(label_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PASCAL-Context ``LabelMap`` (uint16, 0 = unlabeled, 1..459) -> ``(pc60, pc59, pc459)``.

    * PC-60 (mmseg ``SegmentationClassContext``): 0 background, 1..59; classes outside the 59 are background;
    * PC-59 (detectron2 ``annotations_ctx59``): PC-60 - 1 with background -> 255;
    * PC-459 (``annotations_ctx459``, uint16 TIFF): label - 1 with 0 -> 65535.
    """
    if int(label_map.max(initial=0)) > 459:
        raise ValueError(f"PASCAL-Context labels must lie in 0..459, got {int(label_map.max())}.")
    pc60 = PASCAL_CONTEXT_60_LUT[label_map]
    pc59 = pc60 - np.uint8(1)  # background 0 wraps to 255
    pc459 = (label_map.astype(np.int64) - 1).astype(np.uint16)  # 0 wraps to 65535
    return pc60, pc59, pc459


CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""Cityscapes ``labelIds`` -> the 19 evaluation train ids (cityscapesScripts ``labels.py``); others 255."""

CITYSCAPES_LUT = _lut(CITYSCAPES_TRAIN_IDS, 255)


def cityscapes_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` values."""
    return CITYSCAPES_LUT[label_ids]


def load_ade20k_847_ids() -> np.ndarray:
    """ADE20K-full object index (``index_ade20k.pkl`` class id) of each A-847 train id: ``int64 [847]``."""
    return np.loadtxt(RESOURCES / "ade20k_847_ade_ids.txt", dtype=np.int64)


def ade20k_full_class_mask(seg_rgb: np.ndarray) -> np.ndarray:
    """ADE20K-full ``*_seg.png`` ``[H, W, 3]`` -> object class index ``R // 10 * 256 + G`` (ADE20K toolkit)."""
    red, green = seg_rgb[..., 0].astype(np.int64), seg_rgb[..., 1].astype(np.int64)
    return red // 10 * 256 + green


def ade20k_full_labels(class_mask: np.ndarray, ade_ids: np.ndarray) -> np.ndarray:
    """Object class index map -> uint16 A-847 train ids (index of the class in ``ade_ids``), 65535 elsewhere."""
    table = np.full(max(int(class_mask.max(initial=0)), int(ade_ids.max())) + 1, 65535, dtype=np.uint16)
    table[ade_ids] = np.arange(len(ade_ids), dtype=np.uint16)
    return table[class_mask]


ADE20K_THING_LUT = np.array((255, *ADE20K_150_THING_IDS) + (255,) * (255 - len(ADE20K_150_THING_IDS)), np.int64)
"""ADE instance class (R channel of ``annotations_instance``, 1..100) -> A-150 id; 0 and > 100 -> 255."""


def ade20k_panoptic(
    semantic_raw: np.ndarray, instance_rgb: np.ndarray
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """ADE20K-150 raw semantic map + instance PNG -> panoptic ids ``int64 [H, W]`` and ``segments_info``.

    As Mask2Former ``prepare_ade20k_pan_seg.py``: one segment per stuff class present, then one per instance
    (G channel > 0) with the class of its R channel, pasted over stuff; thing pixels outside any instance are
    void. Segment ids are 1..S (stuff by class, then instances by id); category ids are A-150 ids 0..149.
    """
    semantic = ade20k_semantic(semantic_raw).astype(np.int64)  # 255 = other
    is_thing = np.zeros(256, dtype=bool)
    is_thing[list(ADE20K_150_THING_IDS)] = True
    instance_class = ADE20K_THING_LUT[instance_rgb[..., 0]]
    instance_id = instance_rgb[..., 1].astype(np.int64)
    # key: stuff class k -> k, instance g -> 256 + g, void -> -1
    key = np.where((semantic != 255) & ~is_thing[semantic], semantic, -1)
    key = np.where(instance_id > 0, 256 + instance_id, key)
    keys, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(key.shape)
    instance_pairs = np.unique(np.stack([instance_id[instance_id > 0], instance_class[instance_id > 0]]), axis=1)
    if len(np.unique(instance_pairs[0])) != instance_pairs.shape[1]:
        raise ValueError("An ADE20K instance spans several instance classes.")
    if bool((instance_pairs[1] == 255).any()):
        raise ValueError("An ADE20K instance has an instance class outside 1..100.")
    class_of_instance = dict(zip(instance_pairs[0].tolist(), instance_pairs[1].tolist()))
    valid = keys >= 0
    segment_of_key = np.where(valid, np.cumsum(valid), 0)  # ids 1..S for valid keys, 0 for void
    ids = segment_of_key[inverse]
    boxes = _bounding_boxes(ids, int(valid.sum()))
    segments = []
    for segment, k in enumerate(keys[valid].tolist(), start=1):
        category = k if k < 256 else class_of_instance[k - 256]
        x0, y0, x1, y1, area = boxes[segment - 1]
        bbox = [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
        segments.append({"id": segment, "category_id": int(category), "area": int(area), "bbox": bbox, "iscrowd": 0})
    return ids, segments


def _bounding_boxes(ids: np.ndarray, count: int) -> list[tuple[int, int, int, int, int]]:
    """``(x0, y0, x1, y1, area)`` of segments 1..count of an id map (0 = void), computed in one pass."""
    rows, cols = np.nonzero(ids)
    segment = ids[rows, cols] - 1
    x0 = np.full(count, np.iinfo(np.int64).max)
    y0 = np.full(count, np.iinfo(np.int64).max)
    x1 = np.full(count, -1)
    y1 = np.full(count, -1)
    np.minimum.at(x0, segment, cols)
    np.minimum.at(y0, segment, rows)
    np.maximum.at(x1, segment, cols)
    np.maximum.at(y1, segment, rows)
    area = np.bincount(segment, minlength=count)
    return [tuple(int(v) for v in box) for box in zip(x0, y0, x1, y1, area)]  # type: ignore[misc]


def ade20k_instances(instance_rgb: np.ndarray) -> list[dict[str, Any]]:
    """ADE20K instance PNG -> COCO annotations (without ``id`` / ``image_id``): RLE ``segmentation``, A-150
    ``category_id``, ``area``, ``bbox``, ``iscrowd`` 0, ordered by instance id (``prepare_ade20k_ins_seg.py``)."""
    from pycocotools import mask as mask_utils

    instance_id = instance_rgb[..., 1].astype(np.int64)
    present = np.unique(instance_id[instance_id > 0])
    if present.size == 0:
        return []
    masks = instance_id[..., None] == present  # [H, W, N]
    rles = mask_utils.encode(np.asfortranarray(masks.astype(np.uint8)))
    classes = ADE20K_THING_LUT[instance_rgb[..., 0]]
    annotations = []
    for index, rle in enumerate(rles):
        labels = np.unique(classes[masks[..., index]])
        if len(labels) != 1 or labels[0] == 255:
            raise ValueError(f"ADE20K instance {int(present[index])} has instance classes {labels.tolist()}.")
        annotations.append(
            {
                "category_id": int(labels[0]),
                "iscrowd": 0,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)),
                "bbox": [int(v) for v in mask_utils.toBbox(rle)],
            }
        )
    return annotations


# ----------------------------------------------------------------------------------------------------------------
# Files


def load_label(path: Path) -> np.ndarray:
    """Single-channel label array of a PNG / TIFF (palette PNGs give their indices)."""
    return read_label_array(path)


PARTIAL = ".partial"
"""Suffix of files being written; dataset globs (``*.png``) never match them."""


def partial_path(path: Path) -> Path:
    """Temporary name of ``path`` while it is written."""
    return path.with_name(path.name + PARTIAL)


def final_suffix(path: Path) -> str:
    """Suffix of ``path`` ignoring a trailing :data:`PARTIAL`."""
    return Path(path.name.removesuffix(PARTIAL)).suffix.lower()


def save_label(path: Path, array: np.ndarray) -> None:
    """Save a uint8 label map as PNG or a uint16 one as TIFF, chosen by the (final) suffix of ``path``."""
    formats = {".png": ("PNG", np.uint8), ".tif": ("TIFF", np.uint16)}
    suffix = final_suffix(path)
    if suffix not in formats:
        raise ValueError(f"Label files must end in .png or .tif, got {path}.")
    image_format, expected = formats[suffix]
    if array.dtype != expected:
        raise ValueError(f"{suffix} labels must be {np.dtype(expected).name}, got {array.dtype} ({path}).")
    Image.fromarray(array).save(path, format=image_format)


def save_image(path: Path, array: np.ndarray) -> None:
    """Save an RGB ``uint8 [H, W, 3]`` image as JPEG (PIL default quality, as the reference scripts) or PNG."""
    Image.fromarray(array).save(path, format="JPEG" if final_suffix(path) in (".jpg", ".jpeg") else "PNG")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(path)
    write(temporary)
    os.replace(temporary, path)


def progress(items: Sequence[Any], description: str) -> Iterable[Any]:
    """Iterate with a ``rich`` progress bar."""
    from rich.progress import track

    return track(items, description=description, total=len(items))


def convert_all(
    jobs: Sequence[tuple[Path, Path]],
    convert: Callable[[Path, Path], None],
    description: str,
) -> int:
    """Run ``convert(source, temporary_destination)`` for every job whose destination does not exist yet.

    Returns the number of files written. ``convert`` may decline to write (e.g. all-ignore COCO-Stuff maps).
    """
    todo = [(source, destination) for source, destination in jobs if not destination.exists()]
    written = 0
    for source, destination in progress(todo, f"{description} ({len(jobs) - len(todo)} done before)"):
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = partial_path(destination)
        convert(source, temporary)
        if temporary.exists():
            os.replace(temporary, destination)
            written += 1
    return written


def label_converter(function: Callable[[np.ndarray], np.ndarray | None]) -> Callable[[Path, Path], None]:
    """Wrap an array conversion as a file conversion (``None`` result = write nothing)."""

    def convert(source: Path, destination: Path) -> None:
        result = function(load_label(source))
        if result is not None:
            save_label(destination, result)

    return convert


def copy_file(source: Path, destination: Path) -> None:
    """``shutil.copy2`` as a :func:`convert_all` conversion."""
    shutil.copy2(source, destination)


def link_or_copy(source: Path, destination: Path) -> None:
    """Symlink ``destination`` to ``source`` (absolute), copying when the file system refuses links."""
    try:
        destination.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, destination)


def require_input(path: Path, what: str, source: str) -> Path:
    """Exit with a message naming ``path`` and where to download it when an input is missing."""
    if not path.exists():
        raise SystemExit(f"{what} not found at {path}. {source} (see docs/datasets.md).")
    return path


def base_parser(description: str) -> argparse.ArgumentParser:
    """Parser with ``--root`` (default ``$DETECTRON2_DATASETS`` or ``./datasets``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root",
        type=Path,
        default=resolve_root(None),
        help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    return parser

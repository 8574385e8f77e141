"""Write the synthetic benchmark in the real COCO layouts (panoptic, semantic, instances, captions).

Layout under ``root`` (default ``./datasets/ovs_synthetic``)::

    meta.json                                   generation parameters per split (the cache key)
    coco/{train2017,val2017,pretrain2017}/      RGB images, ``{image_id:012d}.png`` (lossless)
    coco/panoptic_{train,val}2017/              panoptic PNGs, id = R + 256 G + 256^2 B, 0 = void
    coco/panoptic_semseg_{train,val}2017/       semantic PNGs, contiguous ids 0..K-1, 255 = ignore
    coco/annotations/panoptic_{train,val}2017.json
    coco/annotations/instances_{train,val}2017.json      things only, RLE segmentation
    coco/annotations/captions_{train,val,pretrain}2017.json

JSON ``category_id`` values are contiguous ``1..K`` (contiguous class id + 1; 0 is void). Image ids are
``offset + index + 1`` with a per-split offset, so ids never collide between splits. Every image is rendered from its
own seed, derived from ``(seed, split, index)`` with ``numpy.random.SeedSequence``: the first ``n`` images of a split
do not depend on how many images the split has, and the three splits are disjoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ovs.data.synthetic.captions import class_captions, scene_captions
from ovs.data.synthetic.classes import CLASSES, NUM_THINGS, SEEN_THING_CLASSES, coco_categories
from ovs.data.synthetic.render import Scene, SceneConfig, render_scene

GENERATOR_VERSION = 2
"""Bumped whenever the rendered bytes change; part of the cache key."""

DEFAULT_ROOT = Path("datasets/ovs_synthetic")
"""Default root of the generated tree (relative to the working directory, like ``$DETECTRON2_DATASETS``)."""

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "pretrain": 2}
"""Split → code mixed into the per-image seed and the image-id offset."""

ANNOTATED_SPLITS = ("train", "val")
"""Splits with panoptic / semantic / instance annotations (``pretrain`` has images and captions only)."""

ID_OFFSET = 1_000_000
"""Image ids of split ``s`` are ``SPLIT_CODES[s] * ID_OFFSET + index + 1``."""

CAPTIONS_PER_IMAGE = 3
"""Complete scene captions per image in every split."""


def split_config(split: str, image_size: int = 112) -> SceneConfig:
    """Scene distribution of ``split``.

    ``train`` samples only seen thing classes; ``val`` samples all 36; ``pretrain`` (toy-CLIP pre-training) samples
    all classes, also empty scenes, larger close-up objects, and in half of the scenes things of a single colour.
    """
    check_split(split)
    if split == "train":
        return SceneConfig(image_size=image_size, allowed_things=SEEN_THING_CLASSES)
    if split == "val":
        return SceneConfig(image_size=image_size)
    return SceneConfig(image_size=image_size, min_instances=0, size_range=(0.08, 0.42), mono_colour_prob=0.5)


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of :data:`SPLIT_CODES`."""
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_CODES)}")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Random generator of image ``index`` of ``split`` (independent streams per image and split)."""
    check_split(split)
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


def image_id(split: str, index: int) -> int:
    """COCO image id of image ``index`` of ``split``."""
    check_split(split)
    return SPLIT_CODES[split] * ID_OFFSET + index + 1


def render_split_image(seed: int, split: str, index: int, image_size: int = 112) -> tuple[Scene, list[str]]:
    """Render image ``index`` of ``split`` and its captions (what the generator writes, without touching disk).

    Returns the scene and its captions: :data:`CAPTIONS_PER_IMAGE` complete scene captions, plus, for ``pretrain``,
    one class-level caption per thing class, per shape and per stuff class present.
    """
    rng = image_rng(seed, split, index)
    scene = render_scene(split_config(split, image_size), rng)
    captions = scene_captions(scene, rng, CAPTIONS_PER_IMAGE)
    if split == "pretrain":
        captions += class_captions(scene, rng, image_size)
    return scene, captions


def encode_panoptic_ids(ids: np.ndarray) -> np.ndarray:
    """Segment ids ``[H, W]`` → RGB ``uint8`` ``[H, W, 3]`` with id = R + 256 G + 256² B."""
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def decode_panoptic_ids(rgb: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` ``[H, W, 3]`` → segment ids ``[H, W]`` ``int64`` (inverse of :func:`encode_panoptic_ids`)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` of a non-empty bool mask ``[H, W]``."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def scene_segments(scene: Scene) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Panoptic id map ``[H, W]`` int64, semantic map ``[H, W]`` uint8 and ``segments_info`` of a scene.

    Thing instances get segment ids ``1..n`` in painter's order, stuff classes the following ids (one segment per
    stuff class). ``category_id`` is the contiguous class id + 1.
    """
    pan = np.zeros(scene.instance_map.shape, dtype=np.int64)
    sem = np.full(scene.instance_map.shape, 255, dtype=np.uint8)
    segments: list[dict[str, Any]] = []
    regions: list[tuple[np.ndarray, int, bool]] = [
        (scene.instance_map == j, inst.class_id, True) for j, inst in enumerate(scene.instances)
    ]
    background = scene.instance_map < 0
    regions += [(background & (scene.stuff_map == s), NUM_THINGS + s, False) for s in scene.stuff]
    for seg_id, (mask, class_id, is_thing) in enumerate(regions, start=1):
        pan[mask] = seg_id
        sem[mask] = class_id
        segments.append(
            {
                "id": seg_id,
                "category_id": CLASSES[class_id].category_id,
                "iscrowd": 0,
                "isthing": int(is_thing),
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
            }
        )
    return pan, sem, segments


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as compact JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")))


def _split_paths(root: Path, split: str) -> list[Path]:
    """Every file or folder that :func:`generate_split` writes for ``split``."""
    coco, name = root / "coco", f"{split}2017"
    paths = [coco / name, coco / "annotations" / f"captions_{name}.json"]
    if split in ANNOTATED_SPLITS:
        paths += [
            coco / f"panoptic_{name}",
            coco / f"panoptic_semseg_{name}",
            coco / "annotations" / f"panoptic_{name}.json",
            coco / "annotations" / f"instances_{name}.json",
        ]
    return paths


def _read_meta(root: Path) -> dict[str, Any]:
    """Contents of ``root/meta.json`` (empty structure when missing)."""
    path = root / "meta.json"
    if not path.exists():
        return {"generator": "ovs.data.synthetic", "splits": {}}
    return json.loads(path.read_text())


def split_params(num_images: int, seed: int, image_size: int) -> dict[str, int]:
    """Cache key of one split."""
    return {"version": GENERATOR_VERSION, "num_images": num_images, "seed": seed, "image_size": image_size}


def is_cached(root: str | Path, split: str, num_images: int, seed: int = 0, image_size: int = 112) -> bool:
    """Whether ``split`` already exists under ``root`` with exactly these parameters."""
    root = Path(root)
    meta = _read_meta(root)
    recorded = meta["splits"].get(split)
    return recorded == split_params(num_images, seed, image_size) and all(p.exists() for p in _split_paths(root, split))


def generate_split(
    root: str | Path = DEFAULT_ROOT, split: str = "train", num_images: int = 2000, seed: int = 0, image_size: int = 112
) -> bool:
    """Generate ``split`` under ``root`` unless it is cached; returns whether anything was written.

    A split recorded in ``meta.json`` with other parameters is deleted and regenerated; ``meta.json`` is updated only
    after every file of the split is written, so an interrupted run is redone.
    """
    check_split(split)
    if not 1 <= num_images < ID_OFFSET:
        raise ValueError(f"num_images must be in [1, {ID_OFFSET - 1}], got {num_images}")
    root = Path(root)
    if is_cached(root, split, num_images, seed, image_size):
        return False
    for path in _split_paths(root, split):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    coco, name = root / "coco", f"{split}2017"
    annotated = split in ANNOTATED_SPLITS
    dirs = [coco / name] + ([coco / f"panoptic_{name}", coco / f"panoptic_semseg_{name}"] if annotated else [])
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)

    images: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    panoptic: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True))
    with progress:
        task = progress.add_task(f"synthetic {split} images", total=num_images)
        for index in range(num_images):
            scene, texts = render_split_image(seed, split, index, image_size)
            img_id = image_id(split, index)
            file_name = f"{img_id:012d}.png"
            Image.fromarray(scene.image).save(coco / name / file_name)
            images.append({"id": img_id, "file_name": file_name, "height": image_size, "width": image_size})
            progress.advance(task)
            captions += [{"id": len(captions) + 1, "image_id": img_id, "caption": t} for t in texts]
            if not annotated:
                continue
            pan, sem, segments = scene_segments(scene)
            Image.fromarray(encode_panoptic_ids(pan)).save(coco / f"panoptic_{name}" / file_name)
            Image.fromarray(sem).save(coco / f"panoptic_semseg_{name}" / file_name)
            panoptic.append({"image_id": img_id, "file_name": file_name, "segments_info": segments})
            for seg in segments:
                if not seg["isthing"]:
                    continue
                rle = mask_utils.encode(np.asfortranarray((pan == seg["id"]).astype(np.uint8)))
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": img_id,
                        "category_id": seg["category_id"],
                        "segmentation": {
                            "size": [int(s) for s in rle["size"]],
                            "counts": rle["counts"].decode("ascii"),
                        },
                        "area": seg["area"],
                        "bbox": [float(b) for b in seg["bbox"]],
                        "iscrowd": 0,
                    }
                )

    info = {"description": f"ovs synthetic benchmark, split {split}", "version": str(GENERATOR_VERSION)}
    ann = coco / "annotations"
    _write_json(ann / f"captions_{name}.json", {"info": info, "images": images, "annotations": captions})
    if annotated:
        categories = coco_categories()
        _write_json(
            ann / f"panoptic_{name}.json",
            {"info": info, "images": images, "annotations": panoptic, "categories": categories},
        )
        things = [c for c in categories if c["isthing"]]
        _write_json(
            ann / f"instances_{name}.json",
            {"info": info, "images": images, "annotations": instances, "categories": things},
        )
    meta = _read_meta(root)
    meta["splits"][split] = split_params(num_images, seed, image_size)
    _write_json(root / "meta.json", meta)
    return True


def generate_benchmark(
    root: str | Path = DEFAULT_ROOT, num_train: int = 2000, num_val: int = 500, seed: int = 0, image_size: int = 112
) -> Path:
    """Generate (cached) the annotated ``train`` and ``val`` splits; returns ``root``."""
    generate_split(root, "train", num_train, seed, image_size)
    generate_split(root, "val", num_val, seed, image_size)
    return Path(root)

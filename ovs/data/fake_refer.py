"""Fake referring-expression datasets in the real on-disk formats (REFER refs pickle + instances.json, VGPhraseCut
``refer_<split>.json``) with independently known masks, for the loader and retrieval tests."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovs.data.fake import fake_image
from ovs.data.refer import REFCOCO_VARIANTS


def _boxes(index: int, count: int, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """``count`` disjoint axis-aligned boxes ``(x0, y0, x1, y1)`` side by side in vertical strips."""
    step = width // count
    return [(i * step + 1, 2 + (index + i) % 3, (i + 1) * step - 1, height - 2 - (index + i) % 2) for i in range(count)]


def box_mask(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie inside the box (the rasterisation of its polygon), ``bool [H, W]``."""
    mask = np.zeros((height, width), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def write_fake_refcoco(
    root: str | Path, variant: str = "refcoco", num_images: int = 2, masks_per_image: int = 3, height: int = 32,
    width: int = 48, split: str = "val",
) -> list[dict[str, Any]]:
    """Write ``refs(<split_by>).p``, ``instances.json`` and the images; returns per image the expected masks,
    sentences and target indices. Every annotation gets one ref with two sentences; a decoy ref of another split is
    added to check the split filter."""
    root = Path(root)
    folder, split_by = REFCOCO_VARIANTS[variant]
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "coco" / "train2014").mkdir(parents=True, exist_ok=True)
    images, annotations, refs, expected = [], [], [], []
    ann_id = 100
    for index in range(num_images):
        image_id = 1000 + index
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        Image.fromarray(fake_image(index, height, width)).save(root / "coco" / "train2014" / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        masks, sentences, targets = [], [], []
        for position, box in enumerate(_boxes(index, masks_per_image, height, width)):
            x0, y0, x1, y1 = box
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0)})
            texts = [f"object {position} of image {index}", f"thing number {position}"]
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
                         "file_name": file_name, "sentences": [{"sent": t, "raw": t, "sent_id": i}
                                                               for i, t in enumerate(texts)]})
            masks.append(box_mask(box, height, width))
            sentences += texts
            targets += [position, position]
            ann_id += 1
        expected.append({"image_id": image_id, "masks": np.stack(masks), "sentences": sentences, "targets": targets})
    decoy = [{"sent": "decoy", "raw": "decoy", "sent_id": 9}]
    refs.append({**refs[0], "ref_id": 1, "split": "train", "sentences": decoy})
    with (root / folder / f"refs({split_by}).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    (root / folder / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    ))
    return expected


def write_fake_phrasecut(
    root: str | Path, num_images: int = 2, phrases_per_image: int = 3, height: int = 32, width: int = 48,
    split: str = "test",
) -> list[dict[str, Any]]:
    """Write ``phrasecut/refer_<split>.json`` and ``phrasecut/images``; each phrase has two box instances (its mask is
    their union). Returns per image the expected masks and phrases."""
    folder = Path(root) / "phrasecut"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    tasks, expected = [], []
    for index in range(num_images):
        image_id = 2000 + index
        Image.fromarray(fake_image(index, height, width)).save(folder / "images" / f"{image_id}.png")
        (folder / "images" / f"{image_id}.png").rename(folder / "images" / f"{image_id}.jpg")
        boxes = _boxes(index, 2 * phrases_per_image, height, width)
        masks, phrases = [], []
        for p in range(phrases_per_image):
            pair = boxes[2 * p:2 * p + 2]
            polygons = [[[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]] for x0, y0, x1, y1 in pair]
            phrase = f"phrase {p} in image {index}"
            tasks.append({"task_id": f"{image_id}__{p}", "image_id": image_id, "phrase": phrase, "Polygons": polygons})
            masks.append(box_mask(pair[0], height, width) | box_mask(pair[1], height, width))
            phrases.append(phrase)
        expected.append({"image_id": image_id, "masks": np.stack(masks), "phrases": phrases})
    (folder / f"refer_{split}.json").write_text(json.dumps(tasks))
    return expected

"""Prepare ADE20K-150 (A-150) in the detectron2 layout (maskclippp.md §7.3).

Inputs under <root>/ADEChallengeData2016 (ADEChallengeData2016.zip and, for panoptic / instance,
annotations_instance.tar from http://sceneparsing.csail.mit.edu/):
  images/{training,validation}/*.jpg, annotations/{training,validation}/*.png, annotations_instance/...

Outputs (existing ones are skipped):
  semantic : annotations_detectron2/{training,validation}/*.png     label - 1, 0 -> 255
  panoptic : ade20k_panoptic_{train,val}.json + ade20k_panoptic_{train,val}/*.png
  instance : ade20k_instance_{train,val}.json                         COCO format, category ids 0..149
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ovs.data import prepare
from ovs.data.ade20k import ADE20K_150_THING_IDS
from ovs.data.class_names import load_class_names
from ovs.data.io import panoptic_id_to_rgb

SPLITS = {"train": "training", "val": "validation"}
INSTANCE_URL = "Download http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar"


def _categories(things_only: bool) -> list[dict[str, object]]:
    names = [synonyms[0] for synonyms in load_class_names("ade150")]
    return [
        {"id": index, "name": name, "isthing": int(index in ADE20K_150_THING_IDS)}
        for index, name in enumerate(names)
        if not things_only or index in ADE20K_150_THING_IDS
    ]


def _image_entry(image: Path) -> dict[str, object]:
    with Image.open(image) as img:
        width, height = img.size
    return {"id": image.stem, "file_name": image.name, "height": height, "width": width}


def _instance_png(base: Path, directory: str, stem: str) -> np.ndarray:
    path = base / "annotations_instance" / directory / f"{stem}.png"
    prepare.require_input(path, "ADE20K instance annotation", INSTANCE_URL)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def semantic(base: Path, split: str) -> None:
    """``annotations`` -> ``annotations_detectron2`` (label - 1, 0 -> 255)."""
    directory = SPLITS[split]
    annotations = prepare.require_input(
        base / "annotations" / directory, "ADE20K annotations", "Download ADEChallengeData2016.zip"
    )
    sources = sorted(annotations.glob("*.png"))
    jobs = [(s, base / "annotations_detectron2" / directory / s.name) for s in sources]
    prepare.convert_all(jobs, prepare.label_converter(prepare.ade20k_semantic), f"A-150 semantic {split}")


def panoptic(base: Path, split: str) -> None:
    """Panoptic PNGs + JSON from the semantic and instance annotations; skipped when the JSON exists."""
    directory, json_file = SPLITS[split], base / f"ade20k_panoptic_{split}.json"
    if json_file.exists():
        return
    images = sorted((base / "images" / directory).glob("*.jpg"))
    entries, annotations = [], []
    for image in prepare.progress(images, f"A-150 panoptic {split}"):
        raw = prepare.load_label(base / "annotations" / directory / f"{image.stem}.png")
        ids, segments = prepare.ade20k_panoptic(raw, _instance_png(base, directory, image.stem))
        output = base / f"ade20k_panoptic_{split}" / f"{image.stem}.png"
        rgb = panoptic_id_to_rgb(ids)  # [H, W, 3]
        prepare.write_atomically(output, lambda tmp: prepare.save_image(tmp, rgb))
        entries.append(_image_entry(image))
        annotations.append({"image_id": image.stem, "file_name": output.name, "segments_info": segments})
    document = {"images": entries, "annotations": annotations, "categories": _categories(things_only=False)}
    prepare.write_atomically(json_file, lambda tmp: tmp.write_text(json.dumps(document)))


def instance(base: Path, split: str) -> None:
    """COCO-format instance JSON from the instance annotations; skipped when the JSON exists."""
    directory, json_file = SPLITS[split], base / f"ade20k_instance_{split}.json"
    if json_file.exists():
        return
    images = sorted((base / "images" / directory).glob("*.jpg"))
    entries, annotations = [], []
    for image in prepare.progress(images, f"A-150 instance {split}"):
        for annotation in prepare.ade20k_instances(_instance_png(base, directory, image.stem)):
            annotations.append({"id": len(annotations) + 1, "image_id": image.stem, **annotation})
        entries.append(_image_entry(image))
    document = {"images": entries, "annotations": annotations, "categories": _categories(things_only=True)}
    prepare.write_atomically(json_file, lambda tmp: tmp.write_text(json.dumps(document)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["train", "val"])
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["semantic", "panoptic", "instance"],
        default=["semantic", "panoptic", "instance"],
        help="panoptic and instance need annotations_instance/",
    )
    args = parser.parse_args(argv)
    base = prepare.require_input(args.root / "ADEChallengeData2016", "ADE20K", "Download ADEChallengeData2016.zip")
    tasks = {"semantic": semantic, "panoptic": panoptic, "instance": instance}
    for task in args.tasks:
        for split in args.splits:
            tasks[task](base, split)


if __name__ == "__main__":
    main()

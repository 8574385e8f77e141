"""Prepare COCO-Panoptic semantic maps: panoptic PNG -> 133-class semantic PNG (maskclippp.md §7.3, Mask2Former
prepare_coco_semantic_annos_from_panoptic_annos.py).

Inputs under <root>/coco from https://cocodataset.org/#download:
  {train2017,val2017}/*.jpg (train2017.zip, val2017.zip),
  annotations/panoptic_{train2017,val2017}.json and panoptic_{train2017,val2017}/*.png
  (panoptic_annotations_trainval2017.zip; unzip the inner panoptic_{split}.zip files into coco/).

Outputs (existing ones are skipped):
  coco/panoptic_semseg_{train2017,val2017}/*.png   contiguous ids 0..132 (category-id order), 255 = void
Crowd segments keep their class, as in the reference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ovs.data import prepare
from ovs.data.io import rgb_to_panoptic_id

SPLITS = {"train": "train2017", "val": "val2017"}
SOURCE = "Download panoptic_annotations_trainval2017.zip from https://cocodataset.org/#download"


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["train", "val"])
    args = parser.parse_args(argv)
    coco = prepare.require_input(args.root / "coco", "COCO", SOURCE)
    for split in args.splits:
        directory = SPLITS[split]
        json_file = prepare.require_input(coco / "annotations" / f"panoptic_{directory}.json", "Panoptic JSON", SOURCE)
        panoptic_dir = prepare.require_input(coco / f"panoptic_{directory}", "Panoptic PNGs", SOURCE)
        document = json.loads(json_file.read_text())
        categories = sorted(document["categories"], key=lambda c: c["id"])
        contiguous = {c["id"]: index for index, c in enumerate(categories)}
        segments = {a["file_name"]: a["segments_info"] for a in document["annotations"]}

        def convert(
            source: Path,
            destination: Path,
            segments: dict[str, list[dict[str, int]]] = segments,
            contiguous: dict[int, int] = contiguous,
        ) -> None:
            with Image.open(source) as img:
                ids = rgb_to_panoptic_id(np.asarray(img.convert("RGB")))  # [H, W]
            prepare.save_label(destination, prepare.panoptic_to_semantic(ids, segments[source.name], contiguous))

        jobs = [(panoptic_dir / name, coco / f"panoptic_semseg_{directory}" / name) for name in sorted(segments)]
        prepare.convert_all(jobs, convert, f"COCO panoptic -> semantic {split}")


if __name__ == "__main__":
    main()

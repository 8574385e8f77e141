"""Prepare COCO-Stuff-164k with 171 contiguous classes (maskclippp.md §7.3; MaskFormer / SAN / zsseg
prepare_coco_stuff_164k_sem_seg.py).

Inputs under <root>/coco from https://github.com/nightrome/cocostuff:
  {train2017,val2017}/*.jpg (COCO images) and stuffthingmaps/{train2017,val2017}/*.png
  (stuffthingmaps_trainval2017.zip: values = COCO category id - 1, 255 = unlabeled).

Outputs (existing ones are skipped):
  coco/stuffthingmaps_detectron2/{train2017,val2017}/*.png   171 ids (80 things + 91 stuff), 255 ignore
As in the reference, label maps that are entirely unlabeled are not written (their images are left out).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ovs.data import prepare

SPLITS = {"train": "train2017", "val": "val2017"}
SOURCE = "Download stuffthingmaps_trainval2017.zip from https://github.com/nightrome/cocostuff"


def convert(raw: np.ndarray) -> np.ndarray | None:
    """171-class map, or ``None`` when every pixel is ignore."""
    label = prepare.coco_stuff_171(raw)
    return None if bool((label == 255).all()) else label


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["train", "val"])
    args = parser.parse_args(argv)
    coco = prepare.require_input(args.root / "coco", "COCO", SOURCE)
    for split in args.splits:
        directory = SPLITS[split]
        maps = prepare.require_input(coco / "stuffthingmaps" / directory, "COCO-Stuff stuffthingmaps", SOURCE)
        sources = sorted(maps.glob("*.png"))
        jobs = [(s, coco / "stuffthingmaps_detectron2" / directory / s.name) for s in sources]
        prepare.convert_all(jobs, prepare.label_converter(convert), f"COCO-Stuff 171 {split}")


if __name__ == "__main__":
    main()

"""Prepare COCO-Object (80 things + background) from COCO-Stuff maps (training-free.md §2.5; GroupViT / TCL
cvt_coco_object.py as used by SCLIP).

Inputs under <root>/coco: {train2017,val2017}/*.jpg and stuffthingmaps/{train2017,val2017}/*.png
(stuffthingmaps_trainval2017.zip from https://github.com/nightrome/cocostuff).

Outputs (existing ones are skipped), the TCL / SCLIP layout with data_root = <root>/coco_object:
  coco_object/images/{split}/*.jpg                        symlinks to coco/{split} (or copies with --copy-images)
  coco_object/annotations/{split}/*_instanceTrainIds.png  0 = background (stuff and unlabeled), 1..80 = things
"""

from __future__ import annotations

from collections.abc import Sequence

from ovs.data import prepare

SPLITS = {"train": "train2017", "val": "val2017"}
SOURCE = "Download stuffthingmaps_trainval2017.zip from https://github.com/nightrome/cocostuff"


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["val"])
    parser.add_argument("--copy-images", action="store_true", help="copy images instead of symlinking them")
    args = parser.parse_args(argv)
    coco = prepare.require_input(args.root / "coco", "COCO", SOURCE)
    out = args.root / "coco_object"
    for split in args.splits:
        directory = SPLITS[split]
        maps = prepare.require_input(coco / "stuffthingmaps" / directory, "COCO-Stuff stuffthingmaps", SOURCE)
        sources = sorted(maps.glob("*.png"))
        prepare.convert_all(
            [(s, out / "annotations" / directory / f"{s.stem}_instanceTrainIds.png") for s in sources],
            prepare.label_converter(prepare.coco_object),
            f"COCO-Object labels {split}",
        )
        prepare.convert_all(
            [(coco / directory / f"{s.stem}.jpg", out / "images" / directory / f"{s.stem}.jpg") for s in sources],
            prepare.copy_file if args.copy_images else prepare.link_or_copy,
            f"COCO-Object images {split}",
        )


if __name__ == "__main__":
    main()

"""Prepare PASCAL VOC 2012 VOC-21 / VOC-20 in the detectron2 layout (maskclippp.md §7.3, ODISE script).

Input: <root>/VOCdevkit/VOC2012 from
http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
(JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt).

Outputs (existing ones are skipped):
  pascal_voc_d2/images/{training,validation}/*.jpg
  pascal_voc_d2/annotations_pascal21/{training,validation}/*.png   0 = background, 1..20, 255 ignore
  pascal_voc_d2/annotations_pascal20/{training,validation}/*.png   background -> 255, others - 1
"""

from __future__ import annotations

from collections.abc import Sequence

from ovs.data import prepare

SPLITS = {"train": "training", "val": "validation"}
SOURCE = "Download http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["train", "val"])
    args = parser.parse_args(argv)
    voc = prepare.require_input(args.root / "VOCdevkit" / "VOC2012", "PASCAL VOC 2012", SOURCE)
    out = args.root / "pascal_voc_d2"
    for split in args.splits:
        directory = SPLITS[split]
        split_list = prepare.require_input(voc / "ImageSets" / "Segmentation" / f"{split}.txt", "Split list", SOURCE)
        stems = [line.strip() for line in split_list.read_text().splitlines() if line.strip()]
        labels = [voc / "SegmentationClass" / f"{stem}.png" for stem in stems]
        prepare.convert_all(
            [(voc / "JPEGImages" / f"{s}.jpg", out / "images" / directory / f"{s}.jpg") for s in stems],
            prepare.copy_file,
            f"VOC images {split}",
        )
        prepare.convert_all(
            [(label, out / "annotations_pascal21" / directory / label.name) for label in labels],
            prepare.label_converter(lambda label: label),
            f"VOC-21 labels {split}",
        )
        prepare.convert_all(
            [(label, out / "annotations_pascal20" / directory / label.name) for label in labels],
            prepare.label_converter(prepare.voc20_from_voc21),
            f"VOC-20 labels {split}",
        )


if __name__ == "__main__":
    main()

"""Prepare Cityscapes 19-class train-id labels (cityscapesScripts createTrainIdLabelImgs, without its dependency).

Inputs under <root>/cityscapes from https://www.cityscapes-dataset.com/downloads/ (login required):
  leftImg8bit/{train,val}/<city>/*_leftImg8bit.png (leftImg8bit_trainvaltest.zip)
  gtFine/{train,val}/<city>/*_gtFine_labelIds.png (gtFine_trainvaltest.zip)

Outputs (existing ones are skipped):
  cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png   0..18, 255 ignore
"""

from __future__ import annotations

from collections.abc import Sequence

from ovs.data import prepare

SOURCE = "Download gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/downloads/"


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=["train", "val"], default=["train", "val"])
    args = parser.parse_args(argv)
    gt = prepare.require_input(args.root / "cityscapes" / "gtFine", "Cityscapes gtFine", SOURCE)
    for split in args.splits:
        sources = sorted(prepare.require_input(gt / split, "Cityscapes split", SOURCE).glob("*/*_gtFine_labelIds.png"))
        jobs = [(s, s.with_name(s.name.replace("_labelIds.png", "_labelTrainIds.png"))) for s in sources]
        prepare.convert_all(jobs, prepare.label_converter(prepare.cityscapes_train_ids), f"Cityscapes {split}")


if __name__ == "__main__":
    main()

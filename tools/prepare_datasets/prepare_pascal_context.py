"""Prepare PASCAL Context PC-59 / PC-459 (detectron2 layout) and PC-60 (mmseg layout) from the full annotations
(maskclippp.md §7.3; training-free.md §2.5).

Inputs under <root>/VOCdevkit/VOC2010:
  JPEGImages/ and ImageSets/Main/{train,val}.txt from
    http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar
  trainval/*.mat (LabelMap, 459 classes) from https://www.cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz
Reading .mat files needs scipy (`pip install scipy`).

Outputs (existing ones are skipped):
  pascal_ctx_d2/images/{training,validation}/*.jpg
  pascal_ctx_d2/annotations_ctx59/{training,validation}/*.png     0..58, 255 = background / other classes
  pascal_ctx_d2/annotations_ctx459/{training,validation}/*.tif    uint16 0..458, 65535 = unlabeled
  VOCdevkit/VOC2010/SegmentationClassContext/*.png                0 = background, 1..59 (PC-60)
  VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt

PC-59 / PC-60 keep the 59 frequent classes of the full label map and turn every other class into background (the
standard PASCAL-Context-59 definition). The reference scripts obtain PC-59 through the Detail API
(`trainval_merged.json`) instead; we expect identical maps but have not compared them on the real data. The splits are
VOC2010's ImageSets/Main lists (4,998 train / 5,105 val images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ovs.data import prepare

SPLITS = {"train": "training", "val": "validation"}
VOC_SOURCE = "Download http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"
CONTEXT_SOURCE = "Download https://www.cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz into VOCdevkit/VOC2010"


def load_label_map(mat_file: Path) -> np.ndarray:
    """``LabelMap`` (uint16, 0 = unlabeled, 1..459) of a PASCAL-Context ``.mat`` file."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise SystemExit("Reading PASCAL-Context .mat files needs scipy: pip install scipy") from err
    return np.asarray(loadmat(mat_file)["LabelMap"], dtype=np.uint16)


def main(argv: Sequence[str] | None = None) -> None:
    parser = prepare.base_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["train", "val"])
    args = parser.parse_args(argv)
    voc = prepare.require_input(args.root / "VOCdevkit" / "VOC2010", "PASCAL VOC 2010", VOC_SOURCE)
    mats = prepare.require_input(voc / "trainval", "PASCAL-Context annotations", CONTEXT_SOURCE)
    out = args.root / "pascal_ctx_d2"
    for split in args.splits:
        directory = SPLITS[split]
        split_list = prepare.require_input(voc / "ImageSets" / "Main" / f"{split}.txt", "Split list", VOC_SOURCE)
        stems = [line.strip() for line in split_list.read_text().splitlines() if line.strip()]
        context_list = voc / "ImageSets" / "SegmentationContext" / f"{split}.txt"
        if not context_list.exists():
            listing = "".join(f"{stem}\n" for stem in stems)
            prepare.write_atomically(context_list, lambda tmp, listing=listing: tmp.write_text(listing))
        prepare.convert_all(
            [(voc / "JPEGImages" / f"{s}.jpg", out / "images" / directory / f"{s}.jpg") for s in stems],
            prepare.copy_file,
            f"PASCAL-Context images {split}",
        )

        def convert(mat_file: Path, pc459_tmp: Path, directory: str = directory) -> None:
            pc60, pc59, pc459 = prepare.pascal_context_labels(load_label_map(mat_file))
            stem = mat_file.stem
            for path, label in (
                (voc / "SegmentationClassContext" / f"{stem}.png", pc60),
                (out / "annotations_ctx59" / directory / f"{stem}.png", pc59),
            ):
                prepare.write_atomically(path, lambda tmp, label=label: prepare.save_label(tmp, label))
            prepare.save_label(pc459_tmp, pc459)  # written last: its existence marks the image as done

        jobs = [(mats / f"{s}.mat", out / "annotations_ctx459" / directory / f"{s}.tif") for s in stems]
        prepare.convert_all(jobs, convert, f"PASCAL-Context labels {split}")


if __name__ == "__main__":
    main()

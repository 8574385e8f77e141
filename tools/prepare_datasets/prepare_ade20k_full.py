"""Prepare ADE20K-Full 847 classes (A-847) in the detectron2 layout (maskclippp.md §7.3, ODISE script).

Input: <root>/ADE20K_2021_17_01/ from the registered download https://groups.csail.mit.edu/vision/datasets/ADE20K/
(index_ade20k.pkl, images/ADE/{training,validation}/.../*.jpg and *_seg.png).

Outputs (existing labels are skipped):
  ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg        short side <= 512 (bilinear)
  ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif   uint16 train ids 0..846, 65535 ignore
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovs.data import prepare
from ovs.data.transforms import resize_image

MAX_SHORT_SIDE = 512


def reference_size(height: int, width: int, max_size: int = MAX_SHORT_SIDE) -> tuple[int, int]:
    """Output size of the reference script: short side ``max_size`` when it exceeds it (Python ``round``)."""
    if width >= height > max_size:
        return max_size, round(width / float(height) * max_size)
    if height >= width > max_size:
        return round(height / float(width) * max_size), max_size
    return height, width


def convert(image_path: Path, label_path: Path, image_out: Path, ade_ids: np.ndarray) -> None:
    """Resize (bilinear image, nearest label, as cv2) and map object classes to A-847 train ids."""
    with Image.open(image_path) as img:
        image = np.array(img.convert("RGB"))  # [H, W, 3]
    with Image.open(image_path.with_name(image_path.stem + "_seg.png")) as seg:
        class_mask = prepare.ade20k_full_class_mask(np.array(seg.convert("RGB")))  # [H, W]
    size = reference_size(*image.shape[:2])
    if size != image.shape[:2]:
        image = resize_image(torch.from_numpy(image).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
        class_mask = F.interpolate(torch.from_numpy(class_mask)[None, None].double(), size=size, mode="nearest")
        class_mask = class_mask[0, 0].long().numpy()
    prepare.write_atomically(image_out, lambda tmp: prepare.save_image(tmp, np.ascontiguousarray(image)))
    prepare.save_label(label_path, prepare.ade20k_full_labels(class_mask, ade_ids))


def main(argv: Sequence[str] | None = None) -> None:
    args = prepare.base_parser(__doc__).parse_args(argv)
    base = prepare.require_input(
        args.root / "ADE20K_2021_17_01", "ADE20K-full", "Download ADE20K_2021_17_01 (registration required)"
    )
    index_file = prepare.require_input(base / "index_ade20k.pkl", "ADE20K-full index", "It ships with the download")
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    ade_ids = prepare.load_ade20k_847_ids()
    jobs, image_outputs = [], {}
    for folder, file_name in zip(index["folder"], index["filename"]):
        split = "validation" if file_name.split("_")[1] == "val" else "training"
        source = args.root / folder / file_name
        label = base / "annotations_detectron2" / split / f"{Path(file_name).stem}.tif"
        jobs.append((source, label))
        image_outputs[label] = base / "images_detectron2" / split / file_name

    def run(source: Path, temporary: Path) -> None:
        convert(source, temporary, image_outputs[Path(str(temporary).removesuffix(prepare.PARTIAL))], ade_ids)

    prepare.convert_all(jobs, run, "A-847")


if __name__ == "__main__":
    main()

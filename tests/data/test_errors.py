"""Bad inputs fail at the boundary with one clear message naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs.data import (
    ADE20K,
    PascalContext459,
    PascalVOC21,
    DatasetFormatError,
    DatasetNotFoundError,
    build_eval_datamodule,
)
from ovs.data.constants import ROOT_ENV_VAR
from ovs.data.fake import write_fake_ade20k, write_fake_pascal_context, write_fake_pascal_voc


def test_missing_root_names_path_and_prepare_script(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        ADE20K(root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "ADEChallengeData2016") in message
    assert "tools/prepare_datasets/prepare_ade20k.py" in message


def test_root_defaults_to_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "elsewhere" / "pascal_voc_d2")):
        PascalVOC21()
    monkeypatch.delenv(ROOT_ENV_VAR)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="datasets/pascal_voc_d2"):
        PascalVOC21()


def test_missing_split_names_directory(tmp_path: Path) -> None:
    write_fake_pascal_voc(tmp_path)
    with pytest.raises(DatasetNotFoundError) as error:
        PascalVOC21(root=tmp_path, split="train")
    assert str(tmp_path / "pascal_voc_d2" / "annotations_pascal21" / "training") in str(error.value)
    assert "prepare_pascal_voc.py" in str(error.value)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        PascalVOC21(root=tmp_path, split="test")


def test_missing_mmseg_split_list(tmp_path: Path) -> None:
    write_fake_pascal_context(tmp_path)
    (tmp_path / "VOCdevkit" / "VOC2010" / "ImageSets" / "SegmentationContext" / "val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="SegmentationContext/val.txt.*prepare_pascal_context.py"):
        build_eval_datamodule("pc60", root=tmp_path).setup("test")


def test_label_id_out_of_range_names_the_file(tmp_path: Path) -> None:
    labels = write_fake_pascal_voc(tmp_path)["21"]
    stem = sorted(labels)[0]
    path = tmp_path / "pascal_voc_d2" / "annotations_pascal21" / "validation" / f"{stem}.png"
    label = labels[stem].copy()
    label[0, 0] = 21  # >= K and not the ignore value 255
    Image.fromarray(label).save(path)
    dataset = PascalVOC21(root=tmp_path)
    with pytest.raises(DatasetFormatError) as error:
        dataset[0]
    assert str(path) in str(error.value) and "[21]" in str(error.value)


def test_uint16_ignore_is_65535_only(tmp_path: Path) -> None:
    labels = write_fake_pascal_context(tmp_path)["459"]
    stem = sorted(labels)[0]
    path = tmp_path / "pascal_ctx_d2" / "annotations_ctx459" / "validation" / f"{stem}.tif"
    label = labels[stem].copy()
    label[0, 0] = 255  # a valid class of PC-459, not ignore
    label[0, 1] = 459
    Image.fromarray(label).save(path)
    with pytest.raises(DatasetFormatError, match=r"\[459\]"):
        PascalContext459(root=tmp_path)[0]
    label[0, 1] = 65535
    Image.fromarray(label).save(path)
    sample = PascalContext459(root=tmp_path)[0]
    assert int(sample["sem_seg"][0, 0]) == 255 and int(sample["sem_seg"][0, 1]) == -1


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    write_fake_ade20k(tmp_path)
    image = tmp_path / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000001.jpg"
    image.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError, match=f"Cannot read image {image}"):
        ADE20K(root=tmp_path)[0]


def test_image_label_size_mismatch(tmp_path: Path) -> None:
    write_fake_ade20k(tmp_path)
    label = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "ADE_val_00000002.png"
    Image.fromarray(np.zeros((16, 48), dtype=np.uint8)).save(label)
    with pytest.raises(DatasetFormatError, match="ADE_val_00000002.jpg.*ADE_val_00000002.png.*same size"):
        ADE20K(root=tmp_path)[1]


def test_missing_image_of_a_label(tmp_path: Path) -> None:
    write_fake_ade20k(tmp_path)
    image = tmp_path / "ADEChallengeData2016" / "images" / "validation" / "ADE_val_00000002.jpg"
    image.unlink()
    with pytest.raises(DatasetNotFoundError, match=f"Image {image} of label"):
        ADE20K(root=tmp_path)


def test_rgb_label_map_is_rejected(tmp_path: Path) -> None:
    write_fake_ade20k(tmp_path)
    label = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation" / "ADE_val_00000001.png"
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(label)
    with pytest.raises(DatasetFormatError, match=f"Label map {label} has image mode 'RGB'"):
        ADE20K(root=tmp_path)[0]


def test_class_names_must_match_the_number_of_classes(tmp_path: Path) -> None:
    write_fake_pascal_voc(tmp_path)
    with pytest.raises(ValueError, match="21 classes but the class names 'voc20' list 20"):
        PascalVOC21(root=tmp_path, class_names="voc20")
    assert PascalVOC21(root=tmp_path, class_names="sclip_voc21").class_names[15][0] == "person"


def test_bad_datamodule_arguments() -> None:
    with pytest.raises(ValueError, match="miou_convention"):
        build_eval_datamodule("voc21", miou_convention="mean")
    with pytest.raises(ValueError, match="variant must be '59', '60' or '459'"):
        build_eval_datamodule("pc59", variant="58")
    with pytest.raises(ValueError, match="ADE20K-847 supports tasks"):
        build_eval_datamodule("ade847", task="panoptic")
    with pytest.raises(ValueError, match="test_resize"):
        build_eval_datamodule("voc21", test_resize={"mode": "short"})

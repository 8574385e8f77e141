"""Label conversions of ovs.data.prepare against hand-computed values, and every tools/prepare_datasets script end to
end on tiny raw downloads (then loaded by the matching Dataset)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.data import (
    ADE20KDataModule,
    COCOObject,
    COCOStuff,
    Cityscapes,
    PascalContextDataModule,
    PascalVOCDataModule,
    prepare,
)
from ovs.data.ade20k import ADE20K_150_THING_IDS
from ovs.data.fake import write_fake_coco_panoptic
from ovs.data.io import panoptic_id_to_rgb, rgb_to_panoptic_id

SCRIPTS = Path(__file__).resolve().parents[2] / "tools" / "prepare_datasets"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"prepare_script_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(array)
    if mode == "P":  # palette PNG like VOC's SegmentationClass, whose indices are the labels
        picture = picture.convert("P")
        assert np.array_equal(np.array(picture), array)
    picture.save(path)


def image(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 100, dtype=np.uint8)


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------------------------
# conversions


def test_ade20k_semantic_shift() -> None:
    raw = np.array([[0, 1, 2], [150, 75, 0]], dtype=np.uint8)
    assert prepare.ade20k_semantic(raw).tolist() == [[255, 0, 1], [149, 74, 255]]


def test_voc20_background_becomes_ignore() -> None:
    label = np.array([[0, 1, 20], [255, 15, 0]], dtype=np.uint8)
    assert prepare.voc20_from_voc21(label).tolist() == [[255, 0, 19], [255, 14, 255]]


def test_coco_stuff_182_to_171() -> None:
    # raw value = COCO id - 1; id 12 (raw 11) is unused; id 92 "banner" (raw 91) is the first stuff class
    raw = np.array([0, 10, 11, 12, 89, 90, 91, 181, 182, 255], dtype=np.uint8)
    assert prepare.coco_stuff_171(raw).tolist() == [0, 10, 255, 11, 79, 255, 80, 170, 255, 255]


def test_coco_object_from_stuff() -> None:
    raw = np.array([0, 10, 12, 89, 91, 181, 255], dtype=np.uint8)
    assert prepare.coco_object(raw).tolist() == [1, 11, 12, 80, 0, 0, 0]


def test_panoptic_to_semantic() -> None:
    ids = np.array([[0, 5, 5], [70000, 70000, 9]])
    segments = [{"id": 5, "category_id": 92}, {"id": 70000, "category_id": 1, "iscrowd": 1}]
    out = prepare.panoptic_to_semantic(ids, segments, {1: 0, 92: 80})
    assert out.tolist() == [[255, 80, 80], [0, 0, 255]]  # crowd keeps its class, unlisted id 9 is void


def test_pascal_context_ids() -> None:
    # full ids: 0 unlabeled, 1 accordion (not in PC-59), 2 aeroplane (PC-59 #0), 458 wood (last PC-59), 459 wool
    label_map = np.array([[0, 1, 2], [458, 459, 9]], dtype=np.uint16)
    pc60, pc59, pc459 = prepare.pascal_context_labels(label_map)
    assert pc60.tolist() == [[0, 0, 1], [59, 0, 2]]
    assert pc59.tolist() == [[255, 255, 0], [58, 255, 1]]
    assert pc459.tolist() == [[65535, 0, 1], [457, 458, 8]] and pc459.dtype == np.uint16
    with pytest.raises(ValueError, match="0..459"):
        prepare.pascal_context_labels(np.array([[460]], dtype=np.uint16))


def test_cityscapes_train_ids() -> None:
    label_ids = np.array([0, 6, 7, 8, 11, 24, 26, 33, 34], dtype=np.uint8)
    assert prepare.cityscapes_train_ids(label_ids).tolist() == [255, 255, 0, 1, 2, 11, 13, 18, 255]


def test_ade20k_full_ids() -> None:
    ade_ids = prepare.load_ade20k_847_ids()
    assert ade_ids.shape == (847,) and ade_ids[:3].tolist() == [2978, 312, 2420] and len(set(ade_ids)) == 847
    seg = np.zeros((1, 3, 3), dtype=np.uint8)
    seg[0, 0] = (2978 // 256 * 10, 2978 % 256, 0)  # wall
    seg[0, 1] = (2420 // 256 * 10 + 7, 2420 % 256, 9)  # sky (R // 10 keeps the high byte)
    class_mask = prepare.ade20k_full_class_mask(seg)
    assert class_mask.tolist() == [[2978, 2420, 0]]
    assert prepare.ade20k_full_labels(class_mask, ade_ids).tolist() == [[0, 2, 65535]]


ADE_SEMANTIC = np.array(
    [[1, 1, 3, 3, 8, 8],
     [1, 1, 3, 3, 8, 8],
     [0, 0, 3, 3, 8, 8]], dtype=np.uint8,
)  # fmt: skip  (1 wall, 3 sky: stuff; 8 bed: thing; 0 other)
ADE_INSTANCE = np.zeros((3, 6, 3), dtype=np.uint8)
ADE_INSTANCE[:2, 4:, 0] = 1  # instance class 1 = bed (A-150 id 7)
ADE_INSTANCE[:2, 4:, 1] = 1
ADE_INSTANCE[0, 0, :2] = (2, 2)  # instance class 2 = windowpane (id 8) pasted over the wall


def test_ade20k_panoptic_by_hand() -> None:
    ids, segments = prepare.ade20k_panoptic(ADE_SEMANTIC, ADE_INSTANCE)
    assert ids.tolist() == [[4, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3], [0, 0, 2, 2, 0, 0]]
    assert segments == [
        {"id": 1, "category_id": 0, "area": 3, "bbox": [0, 0, 2, 2], "iscrowd": 0},
        {"id": 2, "category_id": 2, "area": 6, "bbox": [2, 0, 2, 3], "iscrowd": 0},
        {"id": 3, "category_id": 7, "area": 4, "bbox": [4, 0, 2, 2], "iscrowd": 0},
        {"id": 4, "category_id": 8, "area": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0},
    ]
    instances = prepare.ade20k_instances(ADE_INSTANCE)
    assert [(a["category_id"], a["area"], a["bbox"]) for a in instances] == [(7, 4, [4, 0, 2, 2]), (8, 1, [0, 0, 1, 1])]
    assert ADE20K_150_THING_IDS[:2] == (7, 8)


def test_ade20k_instance_with_two_classes_is_rejected() -> None:
    bad = ADE_INSTANCE.copy()
    bad[1, 5, 0] = 2  # instance 1 now has classes 1 and 2
    with pytest.raises(ValueError, match="instance"):
        prepare.ade20k_panoptic(ADE_SEMANTIC, bad)


def test_save_label_checks_dtype_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16"):
        prepare.save_label(tmp_path / "a.tif", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=".png or .tif"):
        prepare.save_label(tmp_path / "a.jpg", np.zeros((2, 2), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------------------
# scripts


@pytest.mark.parametrize("name", sorted(p.stem for p in SCRIPTS.glob("prepare_*.py")))
def test_every_script_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_script(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--root" in capsys.readouterr().out


def test_prepare_ade20k_end_to_end(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    save(base / "images" / "validation" / "ADE_val_00000001.jpg", image(3, 6))
    save(base / "annotations" / "validation" / "ADE_val_00000001.png", ADE_SEMANTIC)
    save(base / "annotations_instance" / "validation" / "ADE_val_00000001.png", ADE_INSTANCE)
    script = load_script("prepare_ade20k")
    script.main(["--root", str(tmp_path), "--splits", "val"])
    before = mtimes(base)
    script.main(["--root", str(tmp_path), "--splits", "val"])
    assert mtimes(base) == before, "a second run must not rewrite anything"

    semantic = ADE20KDataModule(root=tmp_path)
    semantic.setup("test")
    assert semantic.test_dataset is not None
    expected = torch.from_numpy(ADE_SEMANTIC.astype(np.int64) - 1)
    assert torch.equal(semantic.test_dataset[0]["sem_seg"], expected)

    panoptic = ADE20KDataModule(root=tmp_path, task="panoptic")
    panoptic.setup("test")
    assert panoptic.test_dataset is not None
    sample = panoptic.test_dataset[0]
    assert sample["pan_seg"].tolist() == [[4, 1, 2, 2, 3, 3], [1, 1, 2, 2, 3, 3], [0, 0, 2, 2, 0, 0]]
    assert sample["mask_labels"].tolist() == [0, 2, 7, 8]
    assert [s["isthing"] for s in sample["segments_info"]] == [False, False, True, True]

    instance = ADE20KDataModule(root=tmp_path, task="instance")
    instance.setup("test")
    assert instance.test_dataset is not None
    sample = instance.test_dataset[0]
    assert sample["mask_labels"].tolist() == [7, 8]
    assert sample["masks"][0].nonzero().tolist() == [[0, 4], [0, 5], [1, 4], [1, 5]]


def test_prepare_ade20k_names_missing_instance_download(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    save(base / "images" / "validation" / "ADE_val_00000001.jpg", image(3, 6))
    save(base / "annotations" / "validation" / "ADE_val_00000001.png", ADE_SEMANTIC)
    with pytest.raises(SystemExit, match="annotations_instance.*annotations_instance.tar"):
        load_script("prepare_ade20k").main(["--root", str(tmp_path), "--splits", "val", "--tasks", "panoptic"])


def test_prepare_ade20k_full_end_to_end(tmp_path: Path) -> None:
    base = tmp_path / "ADE20K_2021_17_01"
    folder = "ADE20K_2021_17_01/images/ADE/validation/home"
    seg = np.zeros((600, 520, 3), dtype=np.uint8)
    seg[:300] = (2978 // 256 * 10, 2978 % 256, 0)  # wall -> 0; bottom half unknown id 0 -> 65535
    save(tmp_path / folder / "ADE_val_00000001.jpg", image(600, 520))
    save(tmp_path / folder / "ADE_val_00000001_seg.png", seg)
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": [folder], "filename": ["ADE_val_00000001.jpg"]}, f)
    load_script("prepare_ade20k_full").main(["--root", str(tmp_path)])
    label = np.array(Image.open(base / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif"))
    assert label.dtype == np.uint16 and label.shape == (591, 512)  # short side 520 -> 512, 600 * 512 / 520 = 590.8
    assert set(np.unique(label[:295]).tolist()) == {0} and set(np.unique(label[296:]).tolist()) == {65535}
    assert Image.open(base / "images_detectron2" / "validation" / "ADE_val_00000001.jpg").size == (512, 591)


def test_prepare_pascal_voc_end_to_end(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    label = np.array([[0, 1, 255], [20, 15, 0]], dtype=np.uint8)
    save(voc / "JPEGImages" / "2007_000001.jpg", image(2, 3))
    save(voc / "SegmentationClass" / "2007_000001.png", label, mode="P")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    load_script("prepare_pascal_voc").main(["--root", str(tmp_path), "--splits", "val"])
    for variant, expected in (("21", [[0, 1, -1], [20, 15, 0]]), ("20", [[-1, 0, -1], [19, 14, -1]])):
        datamodule = PascalVOCDataModule(root=tmp_path, variant=variant)
        datamodule.setup("test")
        assert datamodule.test_dataset is not None
        assert datamodule.test_dataset[0]["sem_seg"].tolist() == expected


def test_prepare_pascal_context_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    save(voc / "JPEGImages" / "2008_000001.jpg", image(2, 3))
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000001\n")
    (voc / "trainval").mkdir()
    (voc / "trainval" / "2008_000001.mat").write_bytes(b"")
    script = load_script("prepare_pascal_context")
    monkeypatch.setattr(script, "load_label_map", lambda path: np.array([[0, 1, 2], [458, 459, 9]], np.uint16))
    script.main(["--root", str(tmp_path), "--splits", "val"])
    expected = {
        "59": [[-1, -1, 0], [58, -1, 1]],
        "60": [[0, 0, 1], [59, 0, 2]],
        "459": [[-1, 0, 1], [457, 458, 8]],
    }
    for variant, labels in expected.items():
        datamodule = PascalContextDataModule(root=tmp_path, variant=variant)
        datamodule.setup("test")
        assert datamodule.test_dataset is not None
        assert datamodule.test_dataset[0]["sem_seg"].tolist() == labels


def test_pascal_context_mat_reader_names_scipy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = load_script("prepare_pascal_context")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `from scipy.io import loadmat` fail
    with pytest.raises(SystemExit, match="pip install scipy"):
        script.load_label_map(tmp_path / "x.mat")


def test_prepare_coco_stuff_and_object_end_to_end(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    raw = np.array([[0, 91, 255], [11, 181, 89]], dtype=np.uint8)
    save(coco / "val2017" / "000000000001.jpg", image(2, 3))
    save(coco / "val2017" / "000000000002.jpg", image(2, 3))
    save(coco / "stuffthingmaps" / "val2017" / "000000000001.png", raw)
    save(coco / "stuffthingmaps" / "val2017" / "000000000002.png", np.full((2, 3), 255, dtype=np.uint8))
    load_script("prepare_coco_stuff").main(["--root", str(tmp_path), "--splits", "val"])
    assert not (coco / "stuffthingmaps_detectron2" / "val2017" / "000000000002.png").exists()  # all ignore
    stuff = COCOStuff(root=tmp_path)
    assert len(stuff) == 1 and stuff[0]["sem_seg"].tolist() == [[0, 80, -1], [-1, 170, 79]]

    load_script("prepare_coco_object").main(["--root", str(tmp_path)])
    objects = COCOObject(root=tmp_path)
    assert len(objects) == 2
    assert objects[0]["sem_seg"].tolist() == [[1, 0, 0], [0, 0, 80]]
    assert objects[1]["sem_seg"].tolist() == [[0, 0, 0], [0, 0, 0]]


def test_prepare_coco_panoptic_end_to_end(tmp_path: Path) -> None:
    fake = write_fake_coco_panoptic(tmp_path)
    semseg = tmp_path / "coco" / "panoptic_semseg_val2017"
    for path in semseg.iterdir():
        path.unlink()
    load_script("prepare_coco_panoptic").main(["--root", str(tmp_path), "--splits", "val"])
    for stem, pan in fake["val"].items():
        assert np.array_equal(np.array(Image.open(semseg / f"{stem}.png")), pan.semantic)
    assert rgb_to_panoptic_id(panoptic_id_to_rgb(np.array([[0, 255, 256, 2**24 - 1]]))).tolist() == [
        [0, 255, 256, 2**24 - 1]
    ]
    document = json.loads((tmp_path / "coco" / "annotations" / "panoptic_val2017.json").read_text())
    assert len(document["categories"]) == 133


def test_prepare_cityscapes_end_to_end(tmp_path: Path) -> None:
    base = tmp_path / "cityscapes"
    save(base / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png", image(2, 3))
    label_ids = np.array([[7, 8, 0], [33, 26, 4]], dtype=np.uint8)
    save(base / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", label_ids)
    load_script("prepare_cityscapes").main(["--root", str(tmp_path), "--splits", "val"])
    dataset = Cityscapes(root=tmp_path)
    assert dataset[0]["sem_seg"].tolist() == [[0, 1, -1], [18, 13, -1]]
    assert dataset[0]["meta"]["image_id"] == "lindau_000000_000019"


def test_missing_download_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"{tmp_path / 'coco'}.*stuffthingmaps_trainval2017.zip"):
        load_script("prepare_coco_stuff").main(["--root", str(tmp_path)])

"""SyntheticDataModule: generation in prepare_data and loading through the real COCO Dataset classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovs.data import COCOPanoptic, IGNORE_INDEX, SemanticSegDataset
from ovs.data.synthetic import CLASS_NAMES, SEEN_CLASSES, UNSEEN_CLASSES, SyntheticDataModule, seen_mask
from tests.data.synthetic.conftest import NUM_TRAIN, NUM_VAL, SEED


def _check_common(sample: dict, size: tuple[int, int]) -> None:
    image, sem = sample["image"], sample["sem_seg"]
    assert image.dtype == torch.uint8 and image.shape == (3, *size)
    assert sem.dtype == torch.int64 and sem.shape == size
    valid = sem[sem != IGNORE_INDEX]
    assert valid.numel() > 0 and int(valid.min()) >= 0 and int(valid.max()) < 44
    assert sample["masks"].dtype == torch.bool and sample["masks"].shape[1:] == size
    assert sample["mask_labels"].dtype == torch.int64 and len(sample["mask_labels"]) == len(sample["masks"])
    assert {"file_name", "height", "width", "dataset", "image_id"} <= set(sample["meta"])
    assert sample["meta"]["dataset"] == "ovs_synthetic"


def test_panoptic_datamodule(synthetic_root: Path) -> None:
    dm = SyntheticDataModule(root=synthetic_root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, batch_size=4)
    dm.prepare_data()  # cached: the session fixture already generated it
    dm.setup("fit")
    assert isinstance(dm.train_dataset, COCOPanoptic) and isinstance(dm.val_dataset, COCOPanoptic)
    assert len(dm.train_dataset) == NUM_TRAIN and len(dm.val_dataset) == NUM_VAL
    assert dm.num_classes == 44 and dm.class_names == CLASS_NAMES and dm.val_dataset.class_names == CLASS_NAMES
    assert dm.is_thing == dm.val_dataset.is_thing == [True] * 36 + [False] * 8
    assert torch.equal(dm.seen, seen_mask()) and dm.seen_classes == SEEN_CLASSES

    val = dm.val_dataset[0]
    _check_common(val, (112, 112))
    assert not bool((val["sem_seg"] == IGNORE_INDEX).any())  # every pixel is labelled
    for seg in val["segments_info"]:
        region = val["pan_seg"] == seg["id"]
        assert torch.all(val["sem_seg"][region] == seg["category_id"])
        assert seg["isthing"] == (seg["category_id"] < 36)
    assert sorted(val["mask_labels"].tolist()) == sorted(s["category_id"] for s in val["segments_info"])

    batch = next(iter(dm.train_dataloader()))
    assert len(batch["image"]) == 4
    train_labels: set[int] = set()
    for i in range(len(dm.train_dataset)):
        sample = dm.train_dataset[i]
        _check_common(sample, (112, 112))  # large-scale jitter crops / pads to 112 x 112
        train_labels |= set(sample["mask_labels"].tolist())
    assert not train_labels & set(UNSEEN_CLASSES)


def test_semantic_datamodule(synthetic_root: Path) -> None:
    dm = SyntheticDataModule(root=synthetic_root, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, task="semantic",
                             crop_size=96)
    dm.setup("fit")
    assert isinstance(dm.val_dataset, SemanticSegDataset) and len(dm.val_dataset) == NUM_VAL
    val = dm.val_dataset[1]
    assert val["image"].shape == (3, 112, 112) and val["sem_seg"].shape == (112, 112)
    train = dm.train_dataset[0]
    _check_common(train, (96, 96))
    present = torch.unique(train["sem_seg"][train["sem_seg"] != IGNORE_INDEX])
    assert torch.equal(train["mask_labels"], present)


def test_prepare_data_generates(tmp_path: Path) -> None:
    dm = SyntheticDataModule(root=tmp_path / "syn", num_train=2, num_val=2, image_size=96)
    dm.prepare_data()
    dm.setup("test")
    sample = dm.test_dataset[0]
    assert sample["image"].shape == (3, 96, 96)


@pytest.mark.parametrize("kwargs", [{"task": "instance"}, {"num_train": 0}, {"min_scale": 2.0, "max_scale": 1.0}])
def test_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SyntheticDataModule(**kwargs)  # type: ignore[arg-type]

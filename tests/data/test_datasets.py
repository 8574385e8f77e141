"""Every DataModule loads its fake dataset in the real layout with the right ids, ignore values and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ovs.data import (
    EVAL_PRESETS,
    IGNORE_INDEX,
    ADE20KDataModule,
    COCOPanopticDataModule,
    COCOStuffDataModule,
    build_eval_datamodule,
    get_eval_preset,
    list_collate,
    load_class_names,
    seen_mask,
)
from ovs.data.ade20k import ADE20K_150_THING_IDS
from ovs.data.datamodule import SegDataModule
from ovs.data.fake import fake_image

from .conftest import FakeDatasets


def expected_semantic(raw: np.ndarray, ignore: int | None) -> torch.Tensor:
    """On-disk label map -> expected int64 tensor, the on-disk ignore value becoming IGNORE_INDEX."""
    label = torch.from_numpy(raw.astype(np.int64))
    return label if ignore is None else label.masked_fill(label == ignore, IGNORE_INDEX)


def semantic_cases(fake: FakeDatasets) -> dict[str, tuple[dict[str, np.ndarray], int | None]]:
    return {
        "ade150": (fake.ade20k.semantic["val"], 255),
        "ade847": (fake.ade20k_full["val"], 65535),
        "pc59": (fake.pascal_context["59"], 255),
        "pc60": (fake.pascal_context["60"], None),
        "pc459": (fake.pascal_context["459"], 65535),
        "voc20": (fake.pascal_voc["20"], 255),
        "voc21": (fake.pascal_voc["21"], 255),
        "coco_stuff": (fake.coco_stuff["val"], 255),
        "coco_object": (fake.coco_object, None),
        "coco_panoptic": ({s: p.semantic for s, p in fake.coco_panoptic["val"].items()}, 255),
        "cityscapes": ({k.split("/")[1]: v for k, v in fake.cityscapes.items()}, 255),
    }


def setup_eval(name: str, root: Path, **kwargs: object) -> SegDataModule:
    datamodule = build_eval_datamodule(name, root=root, **kwargs)
    datamodule.setup("test")
    return datamodule


COCO_PANOPTIC_IDS = (
    *(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)),  # 80 things
    92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147, 148, 149, 151, 154,
    155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, 184, *range(185, 201),  # 53 stuff
)
"""COCO panoptic category ids in ascending order (panoptic_coco_categories.json): contiguous id = position."""

NUM_CLASSES = {
    "ade150": 150, "ade847": 847, "pc59": 59, "pc60": 60, "pc459": 459, "voc20": 20, "voc21": 21,
    "coco_stuff": 171, "coco_object": 81, "coco_panoptic": 133, "cityscapes": 19,
}  # fmt: skip
BACKGROUND = {"voc21": 0, "pc60": 0, "coco_object": 0}


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_semantic_labels_match_the_files(fake_datasets: FakeDatasets, name: str) -> None:
    labels, ignore = semantic_cases(fake_datasets)[name]
    datamodule = setup_eval(name, fake_datasets.root)
    dataset = datamodule.test_dataset
    assert dataset is not None and len(dataset) == len(labels) == 2
    assert dataset.num_classes == datamodule.num_classes == NUM_CLASSES[name]
    assert len(dataset.class_names) == NUM_CLASSES[name]
    assert dataset.ignore_index == IGNORE_INDEX
    assert dataset.background_index == datamodule.background_index == BACKGROUND.get(name)
    for index in range(len(dataset)):
        sample = dataset[index]
        stem = sample["meta"]["image_id"]
        stem = f"{int(stem):012d}" if isinstance(stem, int) else stem
        assert torch.equal(sample["sem_seg"], expected_semantic(labels[stem], ignore))
        assert sample["sem_seg"].dtype == torch.int64
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 32, 48)
        assert sample["meta"] | {"file_name": None, "image_id": None} == {
            "file_name": None, "image_id": None, "height": 32, "width": 48, "dataset": name,
        }  # fmt: skip
        assert Path(sample["meta"]["file_name"]).is_file()
        values = sample["sem_seg"].unique()
        assert bool(((values == IGNORE_INDEX) | ((values >= 0) & (values < NUM_CLASSES[name]))).all())


def test_png_images_are_read_exactly(fake_datasets: FakeDatasets) -> None:
    """Cityscapes images are lossless PNGs: the tensor equals the written pixels (RGB order, not normalised)."""
    dataset = setup_eval("cityscapes", fake_datasets.root).test_dataset
    assert dataset is not None
    expected = torch.from_numpy(fake_image(0, 32, 48)).permute(2, 0, 1)
    assert torch.equal(dataset[0]["image"], expected)


def test_coco_panoptic_eval_sample(fake_datasets: FakeDatasets) -> None:
    dataset = setup_eval("coco_panoptic", fake_datasets.root).test_dataset
    assert dataset is not None
    sample = dataset[0]
    fake = fake_datasets.coco_panoptic["val"][f"{sample['meta']['image_id']:012d}"]
    assert torch.equal(sample["pan_seg"], torch.from_numpy(fake.ids))
    contiguous = {category: index for index, category in enumerate(COCO_PANOPTIC_IDS)}
    assert dataset.category_to_contiguous == contiguous
    by_id = {s["id"]: s for s in fake.segments}
    assert {info["id"] for info in sample["segments_info"]} == set(by_id)
    for info in sample["segments_info"]:
        original = by_id[info["id"]]["category_id"]
        assert info["category_id"] == contiguous[original]
        # the semantic PNG of the same segment holds the contiguous id too (written independently by the fake)
        assert int(fake.semantic[fake.ids == info["id"]][0]) == info["category_id"]
        assert info["isthing"] == (info["category_id"] < 80) == (original <= 90)
        assert info["iscrowd"] == by_id[info["id"]]["iscrowd"]
    crowd = [s["id"] for s in fake.segments if s["iscrowd"]]
    assert len(crowd) == 1
    non_crowd = [s for s in fake.segments if not s["iscrowd"]]
    assert sample["masks"].shape == (len(non_crowd), 32, 48) and sample["masks"].dtype == torch.bool
    for mask, label, segment in zip(sample["masks"], sample["mask_labels"], non_crowd):
        assert torch.equal(mask, torch.from_numpy(fake.ids == segment["id"]))
        assert int(label) == dataset.category_to_contiguous[segment["category_id"]]
    assert dataset.is_thing == [i < 80 for i in range(133)]


def test_ade20k_panoptic_and_instance(fake_datasets: FakeDatasets) -> None:
    panoptic = ADE20KDataModule(root=fake_datasets.root, task="panoptic")
    panoptic.setup("test")
    dataset = panoptic.test_dataset
    assert dataset is not None and dataset.is_thing == [i in ADE20K_150_THING_IDS for i in range(150)]
    assert sum(dataset.is_thing) == 100
    sample = dataset[1]
    fake = fake_datasets.ade20k.panoptic["val"][sample["meta"]["image_id"]]
    assert torch.equal(sample["pan_seg"], torch.from_numpy(fake.ids))
    assert torch.equal(sample["sem_seg"], expected_semantic(fake.semantic, 255))
    assert sample["mask_labels"].tolist() == [s["category_id"] for s in fake.segments]

    instance = ADE20KDataModule(root=fake_datasets.root, task="instance")
    instance.setup("test")
    dataset = instance.test_dataset
    assert dataset is not None
    sample = dataset[1]
    things = [s for s in fake.segments if s["category_id"] in ADE20K_150_THING_IDS]
    assert sample["masks"].shape == (len(things), 32, 48)
    for mask, label, segment in zip(sample["masks"], sample["mask_labels"], things):
        assert torch.equal(mask, torch.from_numpy(fake.ids == segment["id"]))
        assert int(label) == segment["category_id"]
    assert all(info["isthing"] and info["iscrowd"] == 0 for info in sample["segments_info"])


def test_eval_loader_batches_lists_with_original_label_size(fake_datasets: FakeDatasets) -> None:
    datamodule = setup_eval("pc59", fake_datasets.root, test_resize={"mode": "short", "size": 64}, eval_batch_size=2)
    batch = next(iter(datamodule.test_dataloader()))
    assert set(batch) == {"image", "sem_seg", "meta"} and len(batch["image"]) == 2
    assert batch["image"][0].shape == (3, 64, 96) and batch["image"][0].dtype == torch.uint8
    assert batch["sem_seg"][0].shape == (32, 48)
    assert batch["meta"][0]["height"] == 32 and batch["meta"][0]["width"] == 48
    assert datamodule.val_dataloader is not None


def test_coco_panoptic_training_samples(fake_datasets: FakeDatasets) -> None:
    datamodule = COCOPanopticDataModule(root=fake_datasets.root, image_size=40, batch_size=2)
    datamodule.setup("fit")
    torch.manual_seed(3)
    batch = next(iter(datamodule.train_dataloader()))
    images = torch.stack(batch["image"])  # fixed-size crops can be stacked
    assert images.shape == (2, 3, 40, 40) and images.dtype == torch.uint8
    columns = (batch["pan_seg"], batch["masks"], batch["mask_labels"], batch["segments_info"])
    for pan, masks, labels, infos in zip(*columns):
        assert masks.shape[1:] == (40, 40) and masks.dtype == torch.bool and len(masks) == len(labels)
        assert bool(masks.flatten(1).any(dim=1).all()), "masks emptied by the crop must be dropped"
        crowd = {i["id"] for i in infos if i["iscrowd"]}
        label_of = {i["id"]: i["category_id"] for i in infos}
        for mask, label in zip(masks, labels):
            segment_ids = pan[mask].unique().tolist()
            assert len(segment_ids) == 1 and segment_ids[0] not in crowd
            assert label_of[segment_ids[0]] == int(label)
    assert datamodule.val_dataset is not None and len(datamodule.val_dataset) == 2


def test_coco_stuff_training_samples(fake_datasets: FakeDatasets) -> None:
    datamodule = COCOStuffDataModule(root=fake_datasets.root, image_size=24, batch_size=2)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert torch.stack(batch["image"]).shape == (2, 3, 24, 24)
    for sem_seg, masks, labels in zip(batch["sem_seg"], batch["masks"], batch["mask_labels"]):
        present = sem_seg[sem_seg != IGNORE_INDEX].unique()
        assert torch.equal(labels, present)
        assert torch.equal(masks, sem_seg[None] == present[:, None, None])


def test_registry_presets() -> None:
    for name, preset in EVAL_PRESETS.items():
        datamodule = build_eval_datamodule(name)
        assert datamodule.name == name and datamodule.background_index == preset.background_index
        for protocol in preset.protocols.values():
            assert len(load_class_names(protocol.class_names)) == datamodule.num_classes
    assert get_eval_preset("ade150").protocols["maskclippp"].miou_convention == "detectron2"
    assert get_eval_preset("ade150").protocols["training_free"].miou_convention == "mmseg"
    training_free = build_eval_datamodule("voc21", protocol="training_free")
    assert training_free.miou_convention == "mmseg" and training_free.class_names[0][:2] == ["sky", "wall"]
    assert build_eval_datamodule("voc21").class_names[0][0] == "background"
    assert build_eval_datamodule("pc60").miou_convention == "mmseg"
    assert build_eval_datamodule("ade847").num_classes == 847
    with pytest.raises(ValueError, match="no 'training_free' protocol"):
        build_eval_datamodule("ade847", protocol="training_free")
    with pytest.raises(KeyError, match="Unknown evaluation dataset 'ade151'"):
        build_eval_datamodule("ade151")


def test_seen_mask_from_a_training_vocabulary() -> None:
    assert build_eval_datamodule("ade150").seen is None
    seen = build_eval_datamodule("ade150", seen_vocabulary="coco_panoptic").seen
    assert seen is not None and int(seen.sum()) == 64


def test_seen_mask_matches_synonyms_by_string_equality_like_the_reference() -> None:
    """A-847 class 729 ("cellular telephone, ..., cellphone, ...") has no synonym string-equal to COCO's "cell phone":
    unseen for the reference (maskclippp.md §8.3), seen only under the normalised option."""
    ade847, coco = load_class_names("ade847"), load_class_names("coco_panoptic")
    assert "cellphone" in ade847[729] and any("cell phone" in names for names in coco)
    exact, normalized = seen_mask(ade847, coco), seen_mask(ade847, coco, match="normalized")
    assert not exact[729] and normalized[729]
    assert (exact != normalized).nonzero().flatten().tolist() == [729]
    assert seen_mask([["Person"], ["person"]], [["person"]]).tolist() == [False, True]


def test_eval_only_datamodule_has_no_training_split(fake_datasets: FakeDatasets) -> None:
    with pytest.raises(NotImplementedError, match="evaluation-only"):
        build_eval_datamodule("voc20", root=fake_datasets.root).setup("fit")


def test_list_collate_rejects_mismatched_keys() -> None:
    with pytest.raises(ValueError, match="keys"):
        list_collate([{"image": 1}, {"image": 2, "sem_seg": 3}])
    assert list_collate([{"a": 1}, {"a": 2}]) == {"a": [1, 2]}

"""Class retrieval over the 80 COCO thing classes from the COCO-Panoptic val segments (``things_only``; paper
§4.1 (b) "COCO instances") on a fake COCO-Panoptic download in its real layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

import ovs
from ovs.data import COCOPanopticDataModule, build_eval_datamodule
from ovs.data.fake import write_fake_coco_panoptic, write_fake_pascal_voc
from ovs.methods.maskinversion import BaselineEmbedder, RegionRetrieval
from tests.conftest import TINY_VIT

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_fake_coco_panoptic(root, num_images=3, height=32, width=48)
    return root


def _trainer() -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, inference_mode=False)


def test_things_only_retrieves_thing_segments_among_80_classes(coco_root: Path) -> None:
    """The shipped config's model and data sections (tiny CLIP, Crop only) against Acc@k by hand: every non-crowd
    segment whose COCO-Panoptic class id is below 80 (the things), ranked among the first 80 class names only; stuff
    segments are not queried."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "maskinversion_coco_instances_vit_b16.yaml").read_text())
    assert config["data"]["class_path"] == "ovs.data.COCOPanopticDataModule"
    init = {**config["model"]["init_args"], "model_name": TINY_VIT, "pretrained": None, "embedders": ["crop"]}
    model = RegionRetrieval(**init)
    datamodule = COCOPanopticDataModule(root=coco_root, **config["data"]["init_args"])
    metrics = _trainer().test(model, datamodule=datamodule, verbose=False)[0]
    assert model.classifier is not None and model.classifier.num_classes == 80
    dataset = datamodule.test_dataloader().dataset
    names = [list(n) for n in dataset.class_names][:80]  # COCO-Panoptic contiguous ids: 80 things, then 53 stuff
    text = ovs.build_text_classifier(model.clip, names, "single")
    hits, total, stuff = {1: 0, 5: 0, 10: 0}, 0, 0
    for sample in dataset:
        labels = sample["mask_labels"]
        crowd = {s["category_id"] for s in sample["segments_info"] if s["iscrowd"]}
        assert len(labels) == sum(not s["iscrowd"] for s in sample["segments_info"]) and crowd  # crowd masks absent
        things = labels < 80
        stuff += int((~things).sum())
        emb = BaselineEmbedder(model.clip, "crop").embed(sample["image"], sample["masks"][things].bool())
        scores = text.merge_synonyms(emb @ text.embeddings.T, dim=1)  # [M, 80]
        for row, label in zip(scores, labels[things].tolist()):
            better = sum(float(s) > float(row[label]) for s in row)
            for k in hits:
                hits[k] += better < k
            total += 1
    assert total > 0 and stuff > 0
    for k, value in hits.items():
        assert metrics[f"test/crop/Acc@{k}"] == pytest.approx(100 * value / total, abs=1e-4)


def test_things_only_needs_thing_flags(tmp_path: Path) -> None:
    write_fake_pascal_voc(tmp_path, num_images=1, height=32, width=48)
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["cls"], things_only=True)
    with pytest.raises(ValueError, match="is_thing"):
        _trainer().test(model, datamodule=build_eval_datamodule("voc20", root=tmp_path), verbose=False)


def test_to_vocabulary_maps_stuff_to_ignore() -> None:
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["cls"])
    labels = torch.tensor([[0, 2, -1], [3, 1, 4]])
    assert torch.equal(model.to_vocabulary(labels), labels)
    model.class_map = torch.tensor([0, -1, 1, -1, 2])  # things 0, 2, 4
    assert model.to_vocabulary(labels).tolist() == [[0, 1, -1], [-1, -1, 2]]

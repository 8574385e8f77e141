"""Referring-expression retrieval: Acc@k / mIoU / oIoU on constructed cases, the REFER / PhraseCut loaders on fake
files in the real formats (restricted refs unpickler included) and the Lightning module (maskinversion spec §4 (a),
§9)."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from ovs.data.fake_refer import write_fake_phrasecut, write_fake_refcoco
from ovs.data.refer import PhraseCut, RefCOCO, ReferringDataModule, load_refs
from ovs.evaluation.referring import ReferringRetrieval
from ovs.methods.maskinversion import BaselineEmbedder, ReferringRetrievalModule
from tests.conftest import TINY_VIT


def test_metric_on_a_constructed_case() -> None:
    candidates = torch.zeros(3, 4, 4, dtype=torch.bool)
    candidates[0, :2], candidates[1, 2:], candidates[2, :, :2] = True, True, True  # 8 px each
    scores = torch.tensor([[0.9, 0.1, 0.5],   # target 0, chosen 0: IoU 1, rank 0
                           [0.9, 0.1, 0.5],   # target 1, chosen 0: IoU 0 (disjoint), rank 2
                           [0.2, 0.1, 0.5]])  # target 0, chosen 2: I = 4, U = 12, rank 1
    target = torch.tensor([0, 1, 0])
    metric = ReferringRetrieval(ks=(1, 2))
    metric.update(scores, target, candidates, candidates[target])
    result = metric.compute()
    assert result["Acc@1"].item() == pytest.approx(100 / 3)
    assert result["Acc@2"].item() == pytest.approx(200 / 3)
    assert result["mIoU"].item() == pytest.approx(100 * (1 + 0 + 4 / 12) / 3)
    assert result["oIoU"].item() == pytest.approx(100 * (8 + 0 + 4) / (8 + 16 + 12))


def _close_to(loaded: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the one-pixel boundary convention of polygon rasterisers."""
    grown = F.max_pool2d(expected.float()[None], 3, 1, 1)[0].bool()
    shrunk = ~F.max_pool2d((~expected).float()[None], 3, 1, 1)[0].bool()
    return not (loaded & ~grown).any() and not (shrunk & ~loaded).any()


def test_refcoco_loader_groups_refs_by_image_and_filters_the_split(tmp_path: Path) -> None:
    expected = write_fake_refcoco(tmp_path, "refcoco+", num_images=2, masks_per_image=3)
    dataset = RefCOCO(tmp_path, "refcoco+", "val")
    assert len(dataset) == 2
    for sample, truth in zip(dataset, expected):
        assert sample["image"].shape == (3, 32, 48) and sample["image"].dtype == torch.uint8
        assert sample["expressions"] == truth["sentences"]  # the decoy train ref is dropped
        assert sample["targets"].tolist() == truth["targets"]
        assert all(_close_to(m, torch.from_numpy(t)) for m, t in zip(sample["masks"], truth["masks"]))


def test_refs_pickle_refuses_globals(tmp_path: Path) -> None:
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([collections.OrderedDict(a=1)], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused to load the global"):
        load_refs(path)
    path.write_bytes(pickle.dumps([{"ref_id": 1, "sentences": [{"sent": "a dog"}]}], protocol=2))
    assert load_refs(path)[0]["sentences"][0]["sent"] == "a dog"


def test_phrasecut_loader_unions_the_instances(tmp_path: Path) -> None:
    expected = write_fake_phrasecut(tmp_path, num_images=2, phrases_per_image=2)
    dataset = PhraseCut(tmp_path, "test")
    for sample, truth in zip(dataset, expected):
        assert sample["expressions"] == truth["phrases"]
        assert sample["targets"].tolist() == [0, 1]
        assert all(_close_to(m, torch.from_numpy(t)) for m, t in zip(sample["masks"], truth["masks"]))
    with pytest.raises(FileNotFoundError, match="VGPhraseCut"):
        PhraseCut(tmp_path, "val")


def test_module_logs_retrieval_metrics_per_embedder(tmp_path: Path) -> None:
    write_fake_refcoco(tmp_path, "refcoco", num_images=2, masks_per_image=3)
    model = ReferringRetrievalModule(model_name=TINY_VIT, pretrained=None, embedders=["maskinversion", "crop"],
                                     iterations=2, image_size=32, alpha=5.0)
    datamodule = ReferringDataModule("refcoco", root=tmp_path)
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, inference_mode=False)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    assert {f"test/{e}/{m}" for e in ("maskinversion", "crop") for m in ("Acc@1", "Acc@5", "mIoU", "oIoU")} <= set(
        metrics
    )
    hits = total = 0
    for sample in RefCOCO(tmp_path, "refcoco", "val"):  # crop baseline by hand: top-1 candidate per sentence
        emb = BaselineEmbedder(model.clip, "crop").embed(sample["image"], sample["masks"])
        text = model.clip.encode_text(sample["expressions"])
        hits += int(((text @ emb.T).argmax(1) == sample["targets"]).sum())
        total += len(sample["expressions"])
    assert metrics["test/crop/Acc@1"] == pytest.approx(100 * hits / total, abs=1e-4)
    assert metrics["test/maskinversion/Acc@5"] == 100.0  # 3 candidates per image: always within the top 5

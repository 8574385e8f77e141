"""Class retrieval with GT masks through Lightning, and the ``mask_embeddings`` API (maskinversion spec §4 (b),
§11, §12.7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

import ovs
from ovs.data import build_eval_datamodule
from ovs.data.fake import write_fake_pascal_voc
from ovs.data.transforms import sem_seg_to_masks
from ovs.methods.maskinversion import BaselineEmbedder, InversionConfig, RegionRetrieval, invert
from ovs.methods.maskinversion.api import clear_cache
from tests.conftest import TINY_VIT

EMBEDDERS = ["maskinversion", "cls", "crop"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_fake_pascal_voc(root, num_images=3, height=32, width=48)
    return root


def _trainer(inference_mode: bool) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, inference_mode=inference_mode)


def _hand_accuracy(model: RegionRetrieval, datamodule, kind: str) -> dict[int, float]:
    """Acc@k by hand: embed every class region, rank all classes by cosine, count the true class in the top k."""
    names = [list(n) for n in datamodule.test_dataloader().dataset.class_names]
    text = ovs.build_text_classifier(model.clip, names, "single")
    hits = {1: 0, 5: 0, 10: 0}
    total = 0
    for sample in datamodule.test_dataloader().dataset:
        masks, labels = sem_seg_to_masks(sample["sem_seg"], len(names))
        if kind == "maskinversion":
            emb = torch.nn.functional.normalize(invert(model.clip, sample["image"], masks, model.config).embeddings)
        else:
            emb = BaselineEmbedder(model.clip, kind).embed(sample["image"], masks)
        scores = text.merge_synonyms(emb @ text.embeddings.T, dim=1)  # max over each class's names
        for row, label in zip(scores, labels.tolist()):
            better = sum(float(s) > float(row[label]) for s in row)
            for k in hits:
                hits[k] += better < k
            total += 1
    return {k: 100 * v / total for k, v in hits.items()}


def test_class_retrieval_logs_acc_at_k_per_embedder(voc_root: Path) -> None:
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=EMBEDDERS, iterations=3, image_size=32)
    datamodule = build_eval_datamodule("voc20", root=voc_root)
    metrics = _trainer(inference_mode=False).test(model, datamodule=datamodule, verbose=False)[0]
    for name in EMBEDDERS:
        assert {f"test/{name}/Acc@{k}" for k in (1, 5, 10)} <= set(metrics)
    datamodule.setup("test")
    for name in EMBEDDERS:
        expected = _hand_accuracy(model, datamodule, name)
        for k, value in expected.items():
            assert metrics[f"test/{name}/Acc@{k}"] == pytest.approx(value, abs=1e-4)
    assert metrics["test/maskinversion/seconds"] > 0


def test_inference_mode_trainer_raises_a_clear_error(voc_root: Path) -> None:
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["maskinversion"], image_size=32)
    with pytest.raises(RuntimeError, match="inference_mode: false"):
        _trainer(inference_mode=True).test(model, datamodule=build_eval_datamodule("voc20", root=voc_root),
                                           verbose=False)


def test_mask_embeddings_api(tiny_vit) -> None:
    clear_cache()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 56), dtype=np.uint8)
    masks[0, :20] = 255  # a 0/255 PNG-style mask is binarised
    masks[1, 20:, 28:] = 1
    options = {"model_name": TINY_VIT, "pretrained": None, "device": "cpu"}
    emb = ovs.mask_embeddings(image, masks, image_size=(32, 48), iterations=3, **options)
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    clip = ovs.methods.maskinversion.api.get_clip(TINY_VIT, None, torch.device("cpu"), None)
    direct = invert(clip, torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(masks > 0).float(),
                    InversionConfig(image_size=(32, 48), iterations=3)).embeddings
    assert torch.allclose(emb, torch.nn.functional.normalize(direct), atol=1e-6)
    crop = ovs.mask_embeddings(image, masks, method="crop", **options)
    assert crop.shape == (2, 32)
    with pytest.raises(ValueError, match="image size"):
        ovs.mask_embeddings(image, masks[:, :10], **options)
    with pytest.raises(ValueError, match="Unknown method"):
        ovs.mask_embeddings(image, masks, method="alphaclip", **options)


def test_paint_masks_by_hand() -> None:
    from ovs.methods.maskinversion.module import paint_masks

    masks = torch.zeros(2, 3, 4, dtype=torch.bool)
    masks[0, 0, :2] = True
    masks[1, 2, 1:] = True
    painted = paint_masks(masks, torch.tensor([7, 3]))
    assert painted.tolist() == [[7, 7, -1, -1], [-1, -1, -1, -1], [-1, 3, 3, 3]]

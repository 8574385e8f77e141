"""MaskInversion and the baselines as mask classifiers of an ``ovs.generators`` generator (issue 14 item 6): the
ground-truth generator reproduces the GT-oracle painted mIoU, and soft overlapping masks are painted as MaskCLIP++
does without fusion (Σ_q softmax(logit_scale · cos)_q · mask_q)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

import ovs
from ovs.data import build_eval_datamodule
from ovs.data.fake import write_fake_pascal_voc
from ovs.generators import GroundTruthMasks
from ovs.generators.base import Batch, MaskGenerator, MaskProposals
from ovs.methods.maskinversion import BaselineEmbedder, RegionRetrieval
from tests.conftest import TINY_VIT

EMBEDDERS = ["maskinversion", "cls", "crop"]
SEMANTIC = ("mIoU", "mIoU_seen", "mIoU_unseen")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_fake_pascal_voc(root, num_images=3, height=32, width=48)
    return root


def run_test(model: RegionRetrieval, root: Path, **data: str) -> dict[str, float]:
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, inference_mode=False)
    metrics = trainer.test(model, datamodule=build_eval_datamodule("voc20", root=root, **data), verbose=False)[0]
    return {k: float(v) for k, v in metrics.items()}


def test_ground_truth_generator_matches_the_oracle(voc_root: Path) -> None:
    """GT masks are disjoint {0, 1} masks, so Σ_q softmax · mask paints each mask with its argmax class: the
    generator path's mIoU must equal the oracle's painted mIoU for every embedder (same masks, same order, so the
    jointly optimised MaskInversion tokens are the same). The Cityscapes names as the "seen" vocabulary split VOC
    into seen (person, car, ...) and unseen classes, so mIoU_seen / mIoU_unseen are compared too."""
    options = {"model_name": TINY_VIT, "pretrained": None, "embedders": EMBEDDERS, "iterations": 3, "image_size": 32}
    torch.manual_seed(0)  # the same random tiny CLIP in both runs
    oracle = run_test(RegionRetrieval(**options), voc_root, seen_vocabulary="cityscapes")
    torch.manual_seed(0)
    model = RegionRetrieval(**options, generator=GroundTruthMasks())
    generated = run_test(model, voc_root, seen_vocabulary="cityscapes")
    for name in EMBEDDERS:
        assert f"test/{name}/Acc@1" in oracle and f"test/{name}/Acc@1" not in generated
        assert f"test/{name}/mask_acc" in oracle and f"test/{name}/mask_acc" not in generated
        for key in SEMANTIC:
            a, b = oracle[f"test/{name}/{key}"], generated[f"test/{name}/{key}"]
            assert b == pytest.approx(a) or (math.isnan(a) and math.isnan(b)), (name, key)
    assert generated["test/maskinversion/seconds"] > 0


class OverlappingHalves(MaskGenerator):
    """Two soft, overlapping masks per image: left 60 % with weight 0.9 and right 60 % with weight 0.7."""

    def forward(self, batch: Batch) -> list[MaskProposals]:
        proposals = []
        for image in batch["image"]:
            h, w = image.shape[-2:]
            masks = torch.zeros(2, h, w)
            masks[0, :, : int(0.6 * w)] = 0.9
            masks[1, :, w - int(0.6 * w):] = 0.7
            proposals.append(MaskProposals(masks))
        return proposals


def test_soft_overlapping_masks_are_painted_by_softmax_weights(voc_root: Path) -> None:
    """The baselines embed the ``mask ≥ 0.5`` regions of soft masks: mIoU of the generator path against a by-hand
    painting from Crop embeddings of those regions (softmax at ``logit_scale``, per-pixel weighted sum, argmax)."""
    scale = 3.0
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["crop"], generator=OverlappingHalves(),
                            logit_scale=scale)
    metrics = run_test(model, voc_root)
    datamodule = build_eval_datamodule("voc20", root=voc_root)
    datamodule.setup("test")
    dataset = datamodule.test_dataloader().dataset
    names = [list(n) for n in dataset.class_names]
    text = ovs.build_text_classifier(model.clip, names, "single")
    k = len(names)
    predictions: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for sample in dataset:
        image, target = sample["image"], sample["sem_seg"]
        masks = OverlappingHalves()({"image": [image]})[0].masks  # [2, H, W]
        emb = BaselineEmbedder(model.clip, "crop").embed(image, masks >= 0.5)
        probs = (scale * text.merge_synonyms(emb @ text.embeddings.T, dim=1)).softmax(dim=1)  # [2, K]
        prediction = torch.zeros(target.shape, dtype=torch.long)
        for y in range(target.shape[0]):
            for x in range(target.shape[1]):
                prediction[y, x] = int(torch.argmax(sum(probs[q] * masks[q, y, x] for q in range(2))))
        predictions.append(prediction)
        targets.append(target)
    expected = confusion_miou(predictions, targets, k)
    assert metrics["test/crop/mIoU"] == pytest.approx(expected, abs=1e-3)


def confusion_miou(predictions: list[torch.Tensor], targets: list[torch.Tensor], k: int) -> float:
    """mIoU (%) as current detectron2 (VOC's convention): IoU = TP / (GT + pred - TP) averaged over the classes
    present in the ground truth; ignore pixels (outside ``[0, K)``) left out."""
    confusion = torch.zeros(k, k, dtype=torch.float64)
    for prediction, target in zip(predictions, targets):
        valid = (target >= 0) & (target < k)
        for p, t in zip(prediction[valid].tolist(), target[valid].tolist()):
            confusion[t, p] += 1
    inter = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = confusion.sum(1) > 0
    return 100 * (inter[present] / union[present]).mean().item()


@pytest.mark.parametrize(("scale", "boundary"), [(3.0, 20), (100.0, 28)])
def test_overlap_is_decided_by_the_temperature_softmax(voc_root: Path, scale: float, boundary: int) -> None:
    """Constructed cosines (the embedder's output replaced): mask 0 (left 28 columns, 0.9) scores class 3 at 0.50 and
    class 7 at 0.45, mask 1 (right 28 columns, 0.7) class 7 at 0.50, all else 0. In the overlap (columns 20-27), by
    hand: at scale 3, class 3 gets 0.9·0.170 + 0.7·0.043 = 0.183 < class 7's 0.9·0.147 + 0.7·0.191 = 0.266, so the
    overlap is class 7 (boundary at column 20); at scale 100, class 3 gets ≈ 0.894 > class 7's ≈ 0.706 (boundary
    at column 28). A per-mask argmax painting or a fixed temperature gets one of the two wrong."""
    torch.manual_seed(0)
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["cls"], generator=OverlappingHalves(),
                            logit_scale=scale)
    cosines = torch.zeros(2, 20)
    cosines[0, 3], cosines[0, 7], cosines[1, 7] = 0.50, 0.45, 0.50
    model.class_scores = lambda embeddings: cosines.clone()  # type: ignore[method-assign]
    metrics = run_test(model, voc_root)
    datamodule = build_eval_datamodule("voc20", root=voc_root)
    datamodule.setup("test")
    targets = [sample["sem_seg"] for sample in datamodule.test_dataloader().dataset]
    predictions = []
    for target in targets:
        prediction = torch.full(target.shape, 7, dtype=torch.long)
        prediction[:, :boundary] = 3
        predictions.append(prediction)
    assert metrics["test/cls/mIoU"] == pytest.approx(confusion_miou(predictions, targets, 20), abs=1e-3)


def test_generator_is_not_saved_and_logit_scale_is_validated() -> None:
    model = RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["cls"], generator=GroundTruthMasks())
    assert "generator" not in model.hparams
    assert not any(name.startswith("generator") for name in model.state_dict())
    with pytest.raises(ValueError, match="logit_scale"):
        RegionRetrieval(model_name=TINY_VIT, pretrained=None, embedders=["cls"], logit_scale=0.0)

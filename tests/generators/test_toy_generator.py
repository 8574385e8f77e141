"""The toy mask generator of the embedded demo (issue 13 item 5): the tiny ResNet backbone, the committed checkpoint
(size, safe loading through the demo config) and the reproduction of its recorded val numbers."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from ovs.cli import REPO_ROOT
from ovs.data.synthetic import IS_THING, generate_split, seen_mask
from ovs.data.synthetic.datamodule import SyntheticPanoptic
from ovs.generators.native import Mask2Former, NativeMask2Former
from ovs.generators.native.backbones import build_backbone
from ovs.generators.native.tiny_resnet import TinyResNetBackbone

sys.path.insert(0, str(REPO_ROOT / "tools"))
import pretrain_toy_generator  # noqa: E402

CHECKPOINT = REPO_ROOT / "checkpoints" / "ovs_toy_generator.pt"
DEMO_CONFIG = REPO_ROOT / "configs" / "maskclip++_toy_synthetic_generator.yaml"


def test_tiny_resnet_output_shapes_strides_and_batch_independence() -> None:
    backbone = build_backbone("resnet_tiny")
    assert isinstance(backbone, TinyResNetBackbone)
    images = torch.randn(3, 3, 64, 96)
    features = backbone(images)
    assert list(features) == ["res2", "res3", "res4", "res5"]
    for name, stride in {"res2": 4, "res3": 8, "res4": 16, "res5": 32}.items():
        expected = (3, backbone.out_channels[name], 64 // stride, 96 // stride)
        assert tuple(features[name].shape) == expected, name
        assert backbone.out_strides[name] == stride
    assert backbone.out_channels == {"res2": 32, "res3": 64, "res4": 128, "res5": 256}
    # GroupNorm: in training mode an image's features do not depend on the rest of the batch (BatchNorm's would).
    backbone.train()
    alone = backbone(images[:1])["res5"]
    assert torch.allclose(backbone(images)["res5"][:1], alone, atol=1e-5)
    assert not torch.allclose(backbone(images)["res5"][1:2], alone, atol=1e-3)  # images differ


def test_tiny_resnet_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="4 widths divisible by 8"):
        TinyResNetBackbone(widths=(30, 64, 128, 256))
    with pytest.raises(ValueError, match="depths >= 1"):
        TinyResNetBackbone(depths=(1, 0, 1, 1))


def demo_generator_args() -> dict:
    """``init_args`` of the demo config's generator (paths resolved against the repository)."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    generator = config["model"]["init_args"]["generator"]
    assert generator["class_path"] == "ovs.generators.native.NativeMask2Former"
    args = dict(generator["init_args"])
    args["weights"] = str(REPO_ROOT / args["weights"])
    args["training_vocabulary"] = str(REPO_ROOT / args["training_vocabulary"])
    return args


def test_committed_checkpoint_is_small_plain_and_matches_the_demo_config_and_card() -> None:
    assert CHECKPOINT.stat().st_size <= 15e6
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    args = demo_generator_args()
    record = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    recorded = {k: v for k, v in record["generator"]["init_args"].items()
                if k not in ("weights", "training_vocabulary")}
    assert {k: args[k] for k in recorded} == recorded
    sizes = {k: v for k, v in args.items() if k not in ("weights", "training_vocabulary", "min_size_test",
                                                          "max_size_test")}
    fresh = Mask2Former(**sizes).state_dict()
    assert set(state) == set(fresh) and all(state[k].shape == fresh[k].shape for k in fresh)
    generator = NativeMask2Former(**args)
    assert len(generator.training_vocabulary) == 35 == args["num_classes"]


def best_iou_by_hand(masks: np.ndarray, pan_seg: np.ndarray, segment_ids: list[int]) -> list[float]:
    """For every GT segment: the largest IoU with a proposal binarised at 0.5 (plain numpy loops)."""
    binary = masks >= 0.5
    result = []
    for segment_id in segment_ids:
        gt = pan_seg == segment_id
        best = 0.0
        for proposal in binary:
            union = np.logical_or(gt, proposal).sum()
            best = max(best, np.logical_and(gt, proposal).sum() / union if union else 0.0)
        result.append(best)
    return result


def test_recorded_val_numbers_reproduce(tmp_path: Path) -> None:
    """The first ``check.images`` val images re-rendered (seed 0): recall@0.5 / ABO recomputed by brute force and PQ
    through the tool's evaluation must match the card within its tolerance, and the recall must be high."""
    record = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    check, tolerance = record["check"], record["tolerance"]
    count = int(check["images"])
    generate_split(tmp_path, "val", count, seed=record["data"]["seed"], image_size=record["data"]["image_size"])
    dataset = SyntheticPanoptic(tmp_path, "val")
    generator = NativeMask2Former(**demo_generator_args())
    best: list[float] = []
    with torch.inference_mode():
        for index in range(count):
            sample = dataset[index]
            proposal = generator({"image": [sample["image"]], "meta": [sample["meta"]]})[0]
            ids = [s["id"] for s in sample["segments_info"]]
            best += best_iou_by_hand(proposal.masks.numpy(), sample["pan_seg"].numpy(), ids)
    recall = 100 * float(np.mean(np.asarray(best) >= 0.5))
    abo = 100 * float(np.mean(best))
    assert abs(recall - check["recall@0.5"]) <= tolerance, (recall, check["recall@0.5"])
    assert abs(abo - check["abo"]) <= tolerance, (abo, check["abo"])
    assert recall >= 80.0, recall
    metrics = pretrain_toy_generator.evaluate_generator(generator, dataset, count, torch.tensor(IS_THING),
                                                        seen_mask())
    assert abs(metrics["recall@0.5"] - recall) < 1e-6
    for key in ("PQ", "PQ_seen"):
        assert abs(metrics[key] - check[key]) <= tolerance, (key, metrics[key], check[key])


def test_time_budget_poly_follows_the_further_budget_and_stops() -> None:
    """LR = initial × (1 − progress)^0.9 with progress = max(step / max_steps, elapsed / budget); stop at 1."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    optimizer.param_groups[0]["initial_lr"] = 0.1
    trainer = SimpleNamespace(global_step=25, max_steps=100, optimizers=[optimizer], should_stop=False)
    callback = pretrain_toy_generator.TimeBudgetPoly(minutes=10.0)
    callback.start = time.perf_counter()  # no time elapsed: the step budget leads (progress 0.25)
    callback.on_train_batch_start(trainer, None, None, 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.75 ** 0.9, rel=1e-4)
    callback.start = time.perf_counter() - 6 * 60  # 6 of 10 minutes: the time budget leads (progress 0.6)
    callback.on_train_batch_start(trainer, None, None, 0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.4 ** 0.9, rel=1e-3)
    assert not trainer.should_stop
    callback.start = time.perf_counter() - 11 * 60
    callback.on_train_batch_start(trainer, None, None, 0)
    assert trainer.should_stop and optimizer.param_groups[0]["lr"] == 0.0


def test_closed_vocabulary_scores_place_each_class_in_its_test_column() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])  # 2 generator classes + void
    lut = torch.tensor([3, 0, 4])  # class 0 -> test 3, class 1 -> test 0, void -> the void column (K = 4)
    scores = pretrain_toy_generator.closed_vocabulary_scores(logits, lut, num_classes=4)
    expected = torch.full((2, 5), float("-inf"))
    expected[:, [3, 0, 4]] = torch.log(torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True))
    assert torch.allclose(scores, expected)
    with pytest.raises(ValueError, match="distinct test class"):
        pretrain_toy_generator.closed_vocabulary_scores(logits, torch.tensor([0, 0, 4]), num_classes=4)

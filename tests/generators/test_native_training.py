"""Mask2Former training (issue 13 item 4): Hungarian matcher against a brute force over permutations, the losses
against their formulas written here, importance sampling, and 20 optimisation steps on the synthetic benchmark."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from lightning import Trainer

from ovs.data.synthetic import SyntheticDataModule
from ovs.data.synthetic.classes import CLASS_FILE
from ovs.generators.native import Mask2FormerModule
from ovs.generators.native import criterion as criterion_module
from ovs.generators.native.criterion import HungarianMatcher, Mask2FormerCriterion, uncertain_point_coords
from ovs.generators.native.module import poly_multiplier, vocabulary_label_map

SEEN_FILE = Path(CLASS_FILE).with_name("ovs_synthetic_seen.txt")
TINY = dict(num_queries=6, hidden_dim=32, conv_dim=32, mask_dim=32, enc_layers=1, enc_ffn_dim=64, dec_layers=2,
            nheads=4, dim_feedforward=64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(logit: float, target: float) -> float:
    return -(target * math.log(sigmoid(logit)) + (1 - target) * math.log(1 - sigmoid(logit)))


def dice(logits: list[float], targets: list[float]) -> float:
    p = [sigmoid(v) for v in logits]
    return 1 - (2 * sum(a * b for a, b in zip(p, targets)) + 1) / (sum(p) + sum(targets) + 1)


def brute_force_cost(logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, target_masks: torch.Tensor,
                     q: int, n: int) -> float:
    """Matching cost of query q and target n from the scalar formulas (weights 2 / 5 / 5, every pixel)."""
    row = [math.exp(v) for v in logits[q].tolist()]
    prob = row[int(labels[n])] / sum(row)
    pred, tgt = masks[q].flatten().tolist(), target_masks[n].flatten().tolist()
    mean_bce = sum(bce(a, b) for a, b in zip(pred, tgt)) / len(pred)
    return -2 * prob + 5 * mean_bce + 5 * dice(pred, tgt)


def test_matcher_equals_brute_force_over_permutations() -> None:
    torch.manual_seed(0)
    queries, targets, classes = 5, 3, 4
    target_masks = (torch.rand(targets, 6, 6) > 0.5).float()
    labels = torch.tensor([2, 0, 3])
    # Queries 4, 1, 0 are noisy copies of targets 0, 1, 2 (class and mask); the rest is noise.
    logits = torch.randn(1, queries, classes + 1)
    masks = torch.randn(1, queries, 6, 6)
    for query, target in ((4, 0), (1, 1), (0, 2)):
        logits[0, query, labels[target]] += 4.0
        masks[0, query] += 6 * (2 * target_masks[target] - 1)
    matcher = HungarianMatcher(num_points=None)
    ((rows, cols),) = matcher(logits, masks, [{"labels": labels, "masks": target_masks}])
    cost = [[brute_force_cost(logits[0], masks[0], labels, target_masks, q, n) for n in range(targets)]
            for q in range(queries)]
    best = min(itertools.permutations(range(queries), targets),
               key=lambda chosen: sum(cost[q][n] for n, q in enumerate(chosen)))
    assert sorted(zip(cols.tolist(), rows.tolist())) == list(enumerate(best))
    assert list(best) == [4, 1, 0]
    torch.testing.assert_close(matcher.cost_matrix(logits[0], masks[0], {"labels": labels, "masks": target_masks}),
                               torch.tensor(cost, dtype=torch.float32), atol=1e-5, rtol=0)


def test_losses_match_their_formulas_on_every_point() -> None:
    """One image, 3 queries, 2 targets, masks of 2 x 2 pixels; the assignment is forced by the masks."""
    classes = 3
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0], [1.0, 0.2, -0.3, 0.4], [-2.0, 1.5, 0.1, 0.3]]])
    masks = torch.tensor([[[[4.0, 3.0], [-5.0, -4.0]], [[0.1, -0.2], [0.3, 0.0]], [[-6.0, -5.0], [5.0, 6.0]]]])
    target_masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
    labels = torch.tensor([2, 1])
    criterion = Mask2FormerCriterion(classes, num_points=None, deep_supervision=False)
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, [{"labels": labels, "masks": target_masks}])
    # Matching: query 0 <-> target 0, query 2 <-> target 1, query 1 unmatched (void, weight 0.1).
    wanted = {0: 2, 1: classes, 2: 1}
    weights = {0: 1.0, 1: 0.1, 2: 1.0}
    nll = {q: -math.log(math.exp(logits[0, q, c]) / sum(math.exp(v) for v in logits[0, q].tolist()))
           for q, c in wanted.items()}
    expected_ce = sum(weights[q] * nll[q] for q in nll) / sum(weights.values())
    pairs = [(0, 0), (2, 1)]
    expected_bce = sum(sum(bce(a, b) for a, b in zip(masks[0, q].flatten().tolist(),
                                                     target_masks[n].flatten().tolist())) / 4
                       for q, n in pairs) / 2
    expected_dice = sum(dice(masks[0, q].flatten().tolist(), target_masks[n].flatten().tolist())
                        for q, n in pairs) / 2
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(expected_bce, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-5)
    total = 2 * expected_ce + 5 * expected_bce + 5 * expected_dice
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)


def test_deep_supervision_adds_every_auxiliary_layer() -> None:
    torch.manual_seed(1)
    criterion = Mask2FormerCriterion(2, num_points=None)
    target = [{"labels": torch.tensor([1]), "masks": (torch.rand(1, 8, 8) > 0.5).float()}]
    layers = [{"pred_logits": torch.randn(1, 3, 3), "pred_masks": torch.randn(1, 3, 8, 8)} for _ in range(3)]
    outputs = {**layers[2], "aux_outputs": layers[:2]}
    losses = criterion(outputs, target)
    separate = [Mask2FormerCriterion(2, num_points=None, deep_supervision=False)(layer, target)["loss"]
                for layer in layers]
    assert {"loss_ce_0", "loss_dice_1", "loss_mask_1"} <= set(losses)
    torch.testing.assert_close(losses["loss"], sum(separate))
    assert losses["loss_ce_0"].item() == pytest.approx(
        Mask2FormerCriterion(2, num_points=None)(layers[0], target)["loss_ce"].item())


def test_no_target_gives_void_only_loss() -> None:
    criterion = Mask2FormerCriterion(2, num_points=16)
    logits = torch.tensor([[[0.0, 1.0, 2.0]]])
    losses = criterion({"pred_logits": logits, "pred_masks": torch.randn(1, 1, 4, 4)},
                       [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 16, 16)}])
    expected = -math.log(math.exp(2.0) / (1 + math.e + math.exp(2.0)))
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0


def test_point_sampled_losses_use_the_sampled_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default (point) path with the importance sampler replaced by fixed pixel centres: BCE / dice are the formulas
    on exactly those pixels, summed over the 2 matched masks of the batch and divided by 2."""
    torch.manual_seed(3)
    height, width = 4, 5
    pixels = [(0, 0), (1, 3), (2, 2), (3, 4), (3, 0), (1, 1)]
    coords = torch.tensor([[(x + 0.5) / width, (y + 0.5) / height] for y, x in pixels])
    monkeypatch.setattr(criterion_module, "uncertain_point_coords",
                        lambda logits, *args: coords.expand(logits.shape[0], -1, -1))
    masks = torch.randn(2, 1, height, width)
    target_masks = (torch.rand(2, 1, height, width) > 0.5).float()
    logits = torch.randn(2, 1, 3)
    targets = [{"labels": torch.tensor([1]), "masks": target_masks[0]},
               {"labels": torch.tensor([0]), "masks": target_masks[1]}]
    losses = Mask2FormerCriterion(2, num_points=len(pixels), deep_supervision=False)(
        {"pred_logits": logits, "pred_masks": masks}, targets)
    pred = [[float(masks[i, 0, y, x]) for y, x in pixels] for i in range(2)]
    tgt = [[float(target_masks[i, 0, y, x]) for y, x in pixels] for i in range(2)]
    expected_bce = sum(sum(bce(a, b) for a, b in zip(pred[i], tgt[i])) / len(pixels) for i in range(2)) / 2
    expected_dice = sum(dice(pred[i], tgt[i]) for i in range(2)) / 2
    assert losses["loss_mask"].item() == pytest.approx(expected_bce, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-5)


def test_prepare_batch_normalises_pads_and_maps_labels() -> None:
    module = Mask2FormerModule(class_names=[["b"], ["a"]], **TINY)
    module.label_map = vocabulary_label_map([["a"], ["b"], ["c"]], module.vocabulary)
    images = [torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8), torch.randint(0, 256, (3, 70, 30),
                                                                                   dtype=torch.uint8)]
    masks = [torch.ones(2, 40, 50, dtype=torch.bool), torch.ones(1, 70, 30, dtype=torch.bool)]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    padded, targets = module.prepare_batch({"image": images, "masks": masks, "mask_labels": labels})
    assert padded.shape == (2, 3, 96, 64)
    mean = torch.tensor([123.675, 116.28, 103.53])[:, None, None]
    std = torch.tensor([58.395, 57.12, 57.375])[:, None, None]
    torch.testing.assert_close(padded[0, :, :40, :50], (images[0].float() - mean) / std)
    assert float(padded[0, :, 40:].abs().sum()) == 0.0 and float(padded[1, :, :, 30:].abs().sum()) == 0.0
    assert targets[0]["labels"].tolist() == [1] and targets[1]["labels"].tolist() == [0]  # class "c" dropped
    assert targets[0]["masks"].shape == (1, 96, 64) and float(targets[0]["masks"].sum()) == 40 * 50
    with pytest.raises(ValueError, match="outside the 3 classes"):
        module.prepare_batch({"image": images[:1], "masks": masks[:1], "mask_labels": [torch.tensor([0, 3])]})


def test_importance_sampling_picks_the_most_uncertain_points() -> None:
    """Logits are 0 on the left column only: the importance points (75 %) all fall there."""
    torch.manual_seed(2)
    logits = torch.full((2, 1, 8, 8), 20.0)
    logits[..., 0] = 0.0
    coords = uncertain_point_coords(logits, num_points=40, oversample_ratio=30.0, importance_sample_ratio=0.75)
    assert coords.shape == (2, 40, 2)
    assert bool((coords[:, :30, 0] < 1 / 8).all())
    assert 0.0 <= float(coords.min()) and float(coords.max()) <= 1.0
    assert float((coords[:, 30:, 0] >= 1 / 8).float().mean()) > 0.5  # the rest is uniform


def test_poly_schedule_and_label_map() -> None:
    assert poly_multiplier(0, 10) == 1.0
    assert poly_multiplier(5, 10) == pytest.approx(0.5 ** 0.9)
    assert poly_multiplier(10, 10) == 0.0
    mapping = vocabulary_label_map([["a"], ["b", "bee"], ["c_d"]], [["C-D"], ["a"]])
    assert mapping.tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="not classes of the training dataset"):
        vocabulary_label_map([["a"]], [["z"]])


def test_optimizer_groups_follow_mask2former() -> None:
    module = Mask2FormerModule(class_names=[["a"], ["b"]], **TINY)
    trainer = Trainer(max_steps=10, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    module.trainer = trainer  # type: ignore[assignment]
    groups = {g["name"]: g for g in module.configure_optimizers()["optimizer"].param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["head"]["lr"] == pytest.approx(1e-4)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.05
    no_decay = {id(p) for p in groups["head_no_decay"]["params"]}
    assert id(module.model.decoder.query_feat.weight) in no_decay
    assert id(module.model.decoder.decoder_norm.weight) in no_decay
    assert id(module.model.decoder.class_embed.weight) not in no_decay
    counted = sum(p.numel() for g in groups.values() for p in g["params"])
    assert counted == sum(p.numel() for p in module.model.parameters())


def test_twenty_steps_on_the_synthetic_benchmark_reduce_the_loss(tmp_path: Path) -> None:
    """Seen classes only (35), 64 px crops; the loss of a fixed batch on every pixel drops after 20 steps."""
    torch.manual_seed(0)
    datamodule = SyntheticDataModule(root=tmp_path / "syn", num_train=4, num_val=1, image_size=64, batch_size=2,
                                     min_scale=1.0, max_scale=1.0)
    module = Mask2FormerModule(class_names=str(SEEN_FILE), num_points=None, lr=3e-3, freeze_backbone=True, **TINY)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    trainer = Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    module.trainer = trainer  # type: ignore[assignment]
    trainer.datamodule = datamodule  # type: ignore[misc]
    module.setup("fit")
    assert module.label_map.tolist().count(-1) == 9  # the unseen things are not in the vocabulary

    def fixed_batch_loss() -> float:
        with torch.no_grad():
            images, targets = module.prepare_batch(batch)
            assert sum(t["labels"].numel() for t in targets) > 0
            return float(module.criterion(module(images), targets)["loss"])

    before = fixed_batch_loss()
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 20
    after = fixed_batch_loss()
    assert after < 0.8 * before
    generator = module.to_generator(min_size_test=64, max_size_test=64)
    (proposals,) = generator({"image": [batch["image"][0]], "meta": [{"height": 64, "width": 64}]})
    assert proposals.masks.shape == (6, 64, 64) and proposals.logits is not None
    assert proposals.logits.shape == (6, 36)

"""The MaskCLIP++ LightningModule: optimisation recipe, training, checkpoints, export and GT-oracle evaluation."""

from __future__ import annotations

import math
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from ovs.backbones import build_text_classifier, create_clip
from ovs.cli import REPO_ROOT
from ovs.data import COCOPanopticDataModule, COCOStuffDataModule, load_class_names
from ovs.data.constants import IGNORE_INDEX
from ovs.data.fake import write_fake_coco_stuff
from ovs.methods.maskclippp import MaskAccuracy, MaskCLIPPP
from ovs.methods.maskclippp.module import cosine_multiplier, paint_masks, training_label_map
from tests.conftest import TINY_CONVNEXT, TINY_RESNET, TINY_VIT
from tests.methods.maskclippp.conftest import (
    FAST,
    TINY_EVA,
    TINY_EVA01,
    FixedDataModule,
    make_sample,
    single_names,
)


def trainer(**kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    return Trainer(**(options | kwargs))


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, outputs: Any, batch: Any, i: int) -> None:
        self.losses.append(float(outputs["loss"]))


def optimizer_groups(model: MaskCLIPPP, max_steps: int = 100) -> dict[str, dict[str, Any]]:
    """Parameter groups of ``configure_optimizers`` by name: initial LR, weight decay, parameter names."""
    model.trainer = trainer(max_steps=max_steps)
    optimizer = model.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        g["name"]: {"lr": g["initial_lr"], "wd": g["weight_decay"], "params": {names[id(p)] for p in g["params"]}}
        for g in optimizer.param_groups
    }


def test_convnext_learning_rate_groups_and_weight_decay() -> None:
    model = MaskCLIPPP(TINY_CONVNEXT, train_class_names="coco_panoptic", psm_heads=4, **FAST)
    groups = optimizer_groups(model)
    assert set(groups) == {"clip_visual", "clip_visual_no_decay", "new", "new_no_decay"}
    assert groups["clip_visual"]["lr"] == pytest.approx(2e-4 * 1e-3) and groups["clip_visual"]["wd"] == 0.05
    assert groups["clip_visual_no_decay"]["lr"] == pytest.approx(2e-7) and groups["clip_visual_no_decay"]["wd"] == 0
    assert groups["new"]["lr"] == pytest.approx(2e-4) and groups["new_no_decay"]["wd"] == 0
    visual = {n for n, p in model.named_parameters() if n.startswith("clip.model.visual.")}
    assert groups["clip_visual"]["params"] | groups["clip_visual_no_decay"]["params"] == visual  # all of ConvNeXt
    norms = {f"clip.model.visual.{m}.{p}" for m, module in model.clip.model.visual.named_modules()
             if "LayerNorm" in type(module).__name__ for p, _ in module.named_parameters(recurse=False)}
    assert len(norms) > 10 and groups["clip_visual_no_decay"]["params"] == norms  # stem, downsample, block, head LNs
    assert any(n.endswith(".bias") for n in groups["clip_visual"]["params"])  # biases keep the decay (reference)
    assert "psm.norm.weight" in groups["new_no_decay"]["params"] and "psm.img_proj.weight" in groups["new"]["params"]
    assert not any(p.requires_grad for n, p in model.clip.model.named_parameters() if not n.startswith("visual."))


def test_vit_trains_attention_input_projections_position_embedding_and_alpha() -> None:
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", psm_width=16, **FAST)
    groups = optimizer_groups(model)
    visual = groups["clip_visual"]["params"]
    assert visual == {f"clip.model.visual.transformer.resblocks.{i}.attn.in_proj_{k}"
                      for i in range(3) for k in ("weight", "bias")}
    assert groups["clip_visual_no_decay"]["params"] == {"clip.model.visual.positional_embedding"}
    assert groups["clip_visual"]["lr"] == pytest.approx(2e-6)
    assert groups["new_no_decay"]["params"] == {"encoder.mask_logit_scale"}
    assert groups["new"]["params"] == {"psm.expand.weight", "psm.expand.bias", "psm.reduce.weight", "psm.reduce.bias"}


def test_eva_trains_q_v_projections_and_position_embedding() -> None:
    model = MaskCLIPPP(TINY_EVA, train_class_names="coco_panoptic", psm_width=16, **FAST)
    groups = optimizer_groups(model)
    prefix = "clip.model.visual.trunk."
    assert groups["clip_visual"]["params"] == {f"{prefix}blocks.{i}.attn.{p}_proj.weight"
                                               for i in range(3) for p in ("q", "v")}
    assert groups["clip_visual_no_decay"]["params"] == {f"{prefix}pos_embed"}
    assert groups["new_no_decay"]["params"] == {"encoder.mask_logit_scale"}


def test_eva01_trains_fused_qkv_and_position_embedding() -> None:
    """EVA01-g structure (fused ``qkv`` weight, q/v biases, no RoPE): the fused weight and ``pos_embed`` train
    (spec §2.4), the mask tokens reach them, one optimiser step changes them."""
    model = MaskCLIPPP(TINY_EVA01, train_class_names="coco_panoptic", total_batch_size=2, psm_width=16, **FAST)
    groups = optimizer_groups(model)
    prefix = "clip.model.visual.trunk."
    assert groups["clip_visual"]["params"] == {f"{prefix}blocks.{i}.attn.qkv.weight" for i in range(3)}
    assert groups["clip_visual_no_decay"]["params"] == {f"{prefix}pos_embed"}
    assert model.clip.dense.trunk.rope is None
    before = model.clip.model.visual.trunk.blocks[2].attn.qkv.weight.detach().clone()
    recorder = LossRecorder()
    trainer(max_steps=1, callbacks=[recorder]).fit(model, FixedDataModule([make_sample(0, 32), make_sample(1, 32)]))
    assert math.isfinite(recorder.losses[0]) and recorder.losses[0] > 0
    assert not torch.equal(model.clip.model.visual.trunk.blocks[2].attn.qkv.weight, before)


def test_resnet_trains_everything_and_checkpoints_batchnorm_statistics() -> None:
    model = MaskCLIPPP(TINY_RESNET, train_class_names="coco_panoptic", psm_width=16, **FAST)
    keys = set(model.trained_state_keys())
    visual = {f"clip.model.visual.{n}" for n, _ in model.clip.model.visual.named_parameters()}
    assert visual <= keys and "encoder.mask_logit_scale" in keys
    assert {"clip.model.visual.bn1.running_mean", "clip.model.visual.bn1.num_batches_tracked"} <= keys
    assert not any(k.startswith("clip.model.transformer.") for k in keys)
    assert optimizer_groups(model)["clip_visual"]["lr"] == pytest.approx(2e-6)


def test_wtext_trains_text_attention_input_projections_only() -> None:
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=2, psm_width=16,
                       templates="single", finetune_text=True)
    trainer(max_steps=1).fit(model, FixedDataModule([make_sample(0), make_sample(1)]))
    groups = optimizer_groups(model)
    assert groups["clip_text"]["params"] == {f"clip.model.transformer.resblocks.{i}.attn.in_proj_weight"
                                             for i in range(2)}
    assert groups["clip_text"]["lr"] == pytest.approx(2e-6)
    assert model.clip.model.transformer.resblocks[0].attn.in_proj_weight.grad is not None


def test_cosine_schedule_from_lr_to_lr_end() -> None:
    assert cosine_multiplier(0, 100, 0.05) == 1.0
    assert cosine_multiplier(50, 100, 0.05) == pytest.approx(0.525)
    assert cosine_multiplier(100, 100, 0.05) == pytest.approx(0.05)
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=2, psm_width=16, **FAST)
    tr = trainer(max_steps=4)
    tr.fit(model, FixedDataModule([make_sample(0), make_sample(1)]))
    group = next(g for g in tr.optimizers[0].param_groups if g["name"] == "new")
    assert group["lr"] == pytest.approx(2e-4 * cosine_multiplier(4, 4, 0.05))


@pytest.mark.parametrize("model_name", [TINY_VIT, TINY_CONVNEXT])
def test_loss_decreases_on_a_fixed_batch(model_name: str) -> None:
    """20 steps on one fixed batch: ViT mask tokens + linear PSM, ConvNeXt mask pooling + pseudo-text PSM."""
    model = MaskCLIPPP(model_name, train_class_names=single_names(), total_batch_size=2, lr=1e-2, lr_end=1e-3,
                       clip_lr_multiplier=1.0, psm_width=16, psm_heads=4, psm_dropout=0.0, **FAST)
    recorder = LossRecorder()
    trainer(max_steps=20, callbacks=[recorder]).fit(model, FixedDataModule([make_sample(0), make_sample(1)]))
    assert len(recorder.losses) == 20
    assert recorder.losses[-1] < 0.5 * recorder.losses[0]


def test_per_device_batch_is_derived_from_total_batch() -> None:
    data = FixedDataModule([make_sample(i) for i in range(4)], batch_size=1)
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=4, psm_width=16, **FAST)
    trainer(max_steps=1).fit(model, data)
    assert data.batch_size == 4
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=4, psm_width=16, **FAST)
    with pytest.raises(ValueError, match="not divisible"):
        trainer(max_steps=1, accumulate_grad_batches=3).fit(model, data)


def test_training_vocabulary_maps_dataset_labels() -> None:
    names = load_class_names("coco_panoptic")
    subset = [names[5], names[0], names[7]]
    torch.testing.assert_close(training_label_map(names, names), torch.arange(133))
    mapping = training_label_map(names, subset)
    assert mapping[[5, 0, 7]].tolist() == [0, 1, 2] and int((mapping >= 0).sum()) == 3
    with pytest.raises(ValueError, match="not classes of the training dataset"):
        training_label_map(subset, names)
    model = MaskCLIPPP(TINY_VIT, train_class_names=subset, total_batch_size=2, psm_width=16, **FAST)
    recorder = LossRecorder()
    sample = make_sample(0)
    sample["mask_labels"] = torch.tensor([7, 5, 100])  # the last class is outside the training vocabulary
    trainer(max_steps=1, callbacks=[recorder]).fit(model, FixedDataModule([sample, sample]))
    assert float(model.trainer.logged_metrics["train/num_masks"]) == 4
    assert model.hparams.train_class_names == subset
    with pytest.raises(ValueError, match="not classes of the training dataset"):
        trainer(max_steps=1).fit(MaskCLIPPP(TINY_VIT, train_class_names="coco_stuff", **FAST),
                                 FixedDataModule([sample, sample]))


def test_images_without_usable_masks_give_a_zero_loss_connected_to_every_parameter() -> None:
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=2, psm_width=16, **FAST)
    empty = make_sample(0)
    empty["masks"] = empty["masks"][:0]
    empty["mask_labels"] = empty["mask_labels"][:0]
    recorder = LossRecorder()
    trainer(max_steps=1, callbacks=[recorder]).fit(model, FixedDataModule([empty, empty]))
    assert recorder.losses == [0.0]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_checkpoint_holds_only_trained_tensors_and_reloads(tmp_path: Path, tiny_vit_weights: Path) -> None:
    model = MaskCLIPPP(TINY_VIT, pretrained=str(tiny_vit_weights), train_class_names="coco_panoptic",
                       total_batch_size=2, psm_width=16, lr=1e-2, **FAST)
    tr = trainer(max_steps=3)
    tr.fit(model, FixedDataModule([make_sample(0), make_sample(1)]))
    path = tmp_path / "model.ckpt"
    tr.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint["state_dict"]) == set(model.trained_state_keys())
    assert "clip.model.token_embedding.weight" not in checkpoint["state_dict"]
    assert checkpoint["hyper_parameters"]["model_name"] == TINY_VIT
    reloaded = MaskCLIPPP.load_from_checkpoint(path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)
    other = MaskCLIPPP(TINY_VIT, pretrained=str(tiny_vit_weights), train_class_names="coco_panoptic", psm="none",
                       **FAST)
    with pytest.raises(ValueError, match="does not match this configuration"):
        other.load_state_dict(checkpoint["state_dict"])


def test_random_init_checkpoint_holds_every_tensor_once(tmp_path: Path) -> None:
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", total_batch_size=2, psm_width=16, **FAST)
    tr = trainer(max_steps=1)
    tr.fit(model, FixedDataModule([make_sample(0), make_sample(1)]))
    tr.save_checkpoint(tmp_path / "model.ckpt")
    saved = torch.load(tmp_path / "model.ckpt", weights_only=True)["state_dict"]
    assert "clip.model.token_embedding.weight" in saved and not any(k.startswith("clip.dense.") for k in saved)
    torch.manual_seed(1)  # a different random CLIP is overwritten by the checkpoint
    reloaded = MaskCLIPPP.load_from_checkpoint(tmp_path / "model.ckpt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, msg=name)


def test_exported_clip_loads_with_create_clip(tmp_path: Path, tiny_vit_weights: Path) -> None:
    model = MaskCLIPPP(TINY_VIT, pretrained=str(tiny_vit_weights), train_class_names="coco_panoptic",
                       total_batch_size=2, psm_width=16, lr=1e-1, clip_lr_multiplier=1.0, **FAST)
    before = model.clip.model.visual.transformer.resblocks[0].attn.in_proj_weight.detach().clone()
    tr = trainer(max_steps=2)
    tr.fit(model, FixedDataModule([make_sample(0), make_sample(1)]))
    tr.save_checkpoint(tmp_path / "model.ckpt")
    export = runpy.run_path(str(REPO_ROOT / "tools" / "export_maskclippp.py"), run_name="export")["main"]
    path = export(["--ckpt", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "clip.pt")])
    loaded = create_clip(TINY_VIT, pretrained=path)
    after = loaded.model.visual.transformer.resblocks[0].attn.in_proj_weight
    assert not torch.allclose(after, before)
    for (name, a), b in zip(model.clip.model.state_dict().items(), loaded.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    torch.testing.assert_close(loaded.encode_image(images), model.clip.encode_image(images))


def test_prepare_batch_resizes_pads_and_keeps_images_without_masks() -> None:
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", psm_width=16, **FAST)
    images = [torch.full((3, 20, 40), 255, dtype=torch.uint8), torch.zeros(3, 30, 30, dtype=torch.uint8)]
    masks = [torch.zeros(0, 20, 40, dtype=torch.bool), torch.ones(2, 15, 15, dtype=torch.bool)]
    batch = model.prepare_batch(images, masks, short_side=24)
    assert batch.images.shape == (2, 3, 24, 48) and batch.masks.shape == (2, 24, 48)  # (24, 48) and (24, 24)
    assert batch.sizes.tolist() == [[24, 48], [24, 24]] and batch.image_index.tolist() == [1, 1]
    assert batch.masks[:, :, :24].eq(1).all() and batch.masks[:, :, 24:].eq(0).all()
    assert batch.images[1, :, :, 24:].eq(0).all() and batch.images[1, :, :, :24].ne(0).all()  # pad = mean colour
    with pytest.raises(ValueError, match="one mask tensor per image"):
        model.prepare_batch(images, masks[:1], None)


def test_paint_masks_and_mask_accuracy() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, 2:, :2] = True
    painted = paint_masks(masks, torch.tensor([5, 7]))
    assert painted[:2].eq(5).all() and painted[2:, :2].eq(7).all() and painted[2:, 2:].eq(IGNORE_INDEX).all()
    assert paint_masks(masks[:0], torch.zeros(0, dtype=torch.long)).eq(IGNORE_INDEX).all()
    metric = MaskAccuracy(4, seen=torch.tensor([True, True, False, False]))
    metric.update(torch.tensor([0, 1, 1, 2, 3]), torch.tensor([0, 0, 1, 2, 2]))
    result = metric.compute()
    # class 0: 1/2, class 1: 1/1, class 2: 1/2, class 3: no GT (excluded)
    assert float(result["mask_acc"]) == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    assert float(result["mask_acc_seen"]) == pytest.approx(75.0)
    assert float(result["mask_acc_unseen"]) == pytest.approx(50.0)


def oracle_reference(model: MaskCLIPPP, data: Any, use_psm: bool) -> tuple[float, float]:
    """Mask accuracy and painted mIoU recomputed from the public forward, per image, per mask."""
    names = data.class_names
    classifier = build_text_classifier(model.clip, names, "single")
    correct, total = torch.zeros(len(names)), torch.zeros(len(names))
    intersection, union = torch.zeros(len(names)), torch.zeros(len(names))
    gt_pixels = torch.zeros(len(names))
    for sample in data.test_dataset:
        masks, labels = sample["masks"], sample["mask_labels"]
        logits = model([sample["image"]], [masks], classifier, use_psm=use_psm)[0]
        pred = logits.argmax(dim=1)
        for q in range(len(labels)):
            total[labels[q]] += 1
            correct[labels[q]] += float(pred[q] == labels[q])
        covered = masks.any(dim=0)
        painted = paint_masks(masks, pred)
        target = torch.where(covered, sample["sem_seg"], IGNORE_INDEX)
        for c in range(len(names)):
            p, t = (painted == c) & covered, target == c
            intersection[c] += (p & t).sum()
            union[c] += (p | t).sum()
            gt_pixels[c] += t.sum()
    accuracy = (correct / total.clamp_min(1))[total > 0].mean()
    iou = (intersection / union.clamp_min(1))[gt_pixels > 0].mean()
    return 100 * float(accuracy), 100 * float(iou)


def test_gt_oracle_evaluation_on_fake_coco_panoptic(fake_coco_root: Path) -> None:
    data = COCOPanopticDataModule(root=fake_coco_root, image_size=64)
    model = MaskCLIPPP(TINY_CONVNEXT, train_class_names="coco_panoptic", psm_heads=4, test_short_side=48, **FAST)
    tr = trainer(max_steps=2)
    tr.fit(model, data)
    result = tr.test(model, data, verbose=False)[0]
    keys = {f"test/{m}{s}" for m in ("mask_acc", "mask_acc_seen", "mask_acc_unseen", "mIoU", "mIoU_seen",
                                      "mIoU_unseen") for s in ("", "_no_psm")}
    assert set(result) == keys
    data.setup("test")
    model.eval()
    for suffix, use_psm in (("", True), ("_no_psm", False)):
        accuracy, miou = oracle_reference(model, data, use_psm)
        assert result[f"test/mask_acc{suffix}"] == pytest.approx(accuracy, abs=1e-3)
        assert result[f"test/mIoU{suffix}"] == pytest.approx(miou, abs=1e-3)
    assert math.isnan(result["test/mask_acc_unseen"])  # training vocabulary = evaluation vocabulary


def test_gt_oracle_on_semantic_labels_uses_one_mask_per_class(tmp_path: Path) -> None:
    write_fake_coco_stuff(tmp_path, num_images=2, height=32, width=32)
    data = COCOStuffDataModule(root=tmp_path)
    model = MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", psm_width=16, eval_psm="no_psm", **FAST)
    classified: list[torch.Tensor] = []
    prepare_batch = model.prepare_batch

    def recording_prepare_batch(images: list[torch.Tensor], masks: list[torch.Tensor], *args: Any) -> Any:
        classified.extend(m.cpu() for m in masks)
        return prepare_batch(images, masks, *args)

    model.prepare_batch = recording_prepare_batch  # type: ignore[method-assign]
    result = trainer().test(model, data, verbose=False)[0]
    model.prepare_batch = prepare_batch  # type: ignore[method-assign]
    assert set(result) == {f"test/{m}" for m in ("mask_acc", "mask_acc_seen", "mask_acc_unseen", "mIoU",
                                                   "mIoU_seen", "mIoU_unseen")}
    assert not math.isnan(result["test/mask_acc_unseen"])  # COCO-Stuff has classes COCO-Panoptic does not
    data.setup("test")
    # The oracle classified exactly one binary mask per class present in each label map, in ascending class order.
    expected_masks = []
    for sample in data.test_dataset:
        sem_seg = sample["sem_seg"]
        present = sorted({int(c) for c in sem_seg.flatten().tolist() if c != IGNORE_INDEX})
        expected_masks.append(torch.stack([sem_seg == c for c in present]))
    assert len(classified) == len(expected_masks)
    for got, expected in zip(classified, expected_masks):
        assert torch.equal(got.bool(), expected)
    # Reference: one binary mask per class present in each label map (ignore excluded), classified one image at a
    # time through the public forward; accuracy per class averaged, painted mIoU over classes with GT pixels.
    names = data.class_names
    classifier = build_text_classifier(model.clip, names, "single")
    correct, total = torch.zeros(len(names)), torch.zeros(len(names))
    intersection, union, gt_pixels = torch.zeros(len(names)), torch.zeros(len(names)), torch.zeros(len(names))
    num_masks = 0
    model.eval()
    for sample in data.test_dataset:
        sem_seg = sample["sem_seg"]
        classes = sorted({int(c) for c in sem_seg.flatten().tolist() if c != IGNORE_INDEX})
        masks = torch.stack([sem_seg == c for c in classes])
        num_masks += len(classes)
        pred = model([sample["image"]], [masks], classifier, use_psm=False)[0].argmax(dim=1)
        painted = torch.full_like(sem_seg, IGNORE_INDEX)
        for c, p, mask in zip(classes, pred.tolist(), masks):
            total[c] += 1
            correct[c] += float(p == c)
            painted[mask] = p
        for c in range(len(names)):
            p, t = painted == c, sem_seg == c
            intersection[c] += (p & t).sum()
            union[c] += (p | t).sum()
            gt_pixels[c] += t.sum()
    assert num_masks > 2 * 2  # several classes per image, not one mask per image
    accuracy = 100 * float((correct / total.clamp_min(1))[total > 0].mean())
    miou = 100 * float((intersection / union.clamp_min(1))[gt_pixels > 0].mean())
    assert result["test/mask_acc"] == pytest.approx(accuracy, abs=1e-3)
    assert result["test/mIoU"] == pytest.approx(miou, abs=1e-3)

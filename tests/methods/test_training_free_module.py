"""The shared Lightning test loop of the dense segmenters on fake datasets in their real layouts, and the
``tools/eval.py`` multi-dataset table."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ovs.cli import REPO_ROOT
from ovs.data import build_eval_datamodule, load_class_names
from ovs.data.fake import write_fake_pascal_voc
from ovs.methods import GEM, METHODS, SCLIP
from tests.conftest import TEST_MODEL_CONFIGS, TINY_VIT

TINY_PROTOCOL = {"size": 32, "slide_crop": 24, "slide_stride": 16, "templates": "single"}
VOC21_PROTOCOL = {"class_names": "sclip_voc21", "logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1}


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    write_fake_pascal_voc(root, num_images=3, height=32, width=48)
    return root


def mmseg_miou(predictions: list[torch.Tensor], targets: list[torch.Tensor], num_classes: int) -> float:
    """mmseg IoUMetric by hand: per-class I / U over the dataset, NaN where U = 0, nanmean, percent."""
    intersection, union = torch.zeros(num_classes), torch.zeros(num_classes)
    for pred, gt in zip(predictions, targets):
        valid = gt >= 0
        for c in range(num_classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            intersection[c] += (p & g).sum()
            union[c] += (p | g).sum()
    iou = intersection / union
    return 100 * float(iou[~torch.isnan(iou)].mean())


def trainer(root: Path) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(root, name="", version=""),
                   enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


def test_test_step_logs_the_metrics_of_the_dataset_protocol(tiny_vit, voc_root: Path, tmp_path: Path) -> None:
    model = SCLIP(clip=tiny_vit, inference=TINY_PROTOCOL, protocols={"voc21": VOC21_PROTOCOL}, num_overlays=2)
    datamodule = build_eval_datamodule("voc21", root=voc_root)
    metrics = trainer(tmp_path).test(model, datamodule=datamodule, verbose=False)[0]
    assert set(metrics) == {"test/mIoU", "test/pAcc", "test/mAcc", "test/fwIoU"}
    assert model.config.prob_thd == 0.1 and model.config.area_thd == 0.1  # the voc21 row was selected

    # independent recomputation with the same protocol through the public API
    model.configure_protocol("voc21")
    model.set_vocabulary(load_class_names("sclip_voc21"), background_index=0)
    samples = [datamodule.test_dataset[i] for i in range(len(datamodule.test_dataset))]
    targets = [s["sem_seg"] for s in samples]
    predictions = [model.segment([s["image"]], [tuple(s["sem_seg"].shape)])[0].labels for s in samples]
    assert math.isclose(metrics["test/mIoU"], mmseg_miou(predictions, targets, 21), abs_tol=1e-4)

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["images"] == ["test/voc21/overlay_0", "test/voc21/overlay_1"]
    assert "test/voc21/per_class_iou/text_summary" in events.Tags()["tensors"]


def test_one_model_switches_protocol_vocabulary_and_metric_per_dataset(tiny_vit, voc_root: Path,
                                                                        tmp_path: Path) -> None:
    """GEM's VOC protocol (foreground-only + 0.85 rule) on voc21, then plain argmax on voc20, same module."""
    model = GEM(clip=tiny_vit, depth=2, inference={"size": 32, "templates": "single"},
                protocols={"voc21": {"class_names": "sclip_voc21", "foreground_only": True, "prob_thd": 0.85}},
                num_overlays=0)
    run = trainer(tmp_path)
    voc21 = build_eval_datamodule("voc21", root=voc_root)
    metrics21 = run.test(model, datamodule=voc21, verbose=False)[0]
    assert model.vocabulary.class_ids.tolist() == list(range(1, 21))
    assert model.metric.num_classes == 21
    voc20 = build_eval_datamodule("voc20", root=voc_root)
    metrics = run.test(model, datamodule=voc20, verbose=False)[0]
    assert model.config.prob_thd == 0.0 and model.vocabulary.class_ids is None
    assert model.metric.num_classes == 20
    # both runs against the public API with each dataset's protocol, scored by hand
    for name, datamodule, names, background, result in (
        ("voc21", voc21, load_class_names("sclip_voc21"), 0, metrics21),
        ("voc20", voc20, voc20.class_names, None, metrics),
    ):
        model.configure_protocol(name)
        model.set_vocabulary(names, background_index=background)
        samples = [datamodule.test_dataset[i] for i in range(len(datamodule.test_dataset))]
        predictions = [model.segment([s["image"]], [tuple(s["sem_seg"].shape)])[0].labels for s in samples]
        expected = mmseg_miou(predictions, [s["sem_seg"] for s in samples], datamodule.num_classes)
        assert math.isclose(result["test/mIoU"], expected, abs_tol=1e-4), name


def test_protocol_class_names_must_match_the_dataset(tiny_vit, voc_root: Path, tmp_path: Path) -> None:
    model = SCLIP(clip=tiny_vit, inference=TINY_PROTOCOL, protocols={"voc21": {"class_names": "sclip_voc20"}})
    with pytest.raises(ValueError, match="lists 20 classes; dataset 'voc21' has 21"):
        trainer(tmp_path).test(model, datamodule=build_eval_datamodule("voc21", root=voc_root), verbose=False)


def test_unknown_protocol_key_fails_at_construction(tiny_vit) -> None:
    with pytest.raises(ValueError, match="Protocol for dataset 'voc21'.*Unknown inference setting"):
        SCLIP(clip=tiny_vit, protocols={"voc21": {"prob_threshold": 0.1}})


@pytest.fixture(scope="module")
def toy_vit():
    from ovs.backbones import create_clip

    return create_clip("ovs-toy-vit")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_the_toy_vit(toy_vit, method: str) -> None:
    """The synthetic benchmark's toy CLIP (patch 8, 112 px, 6 blocks): nothing assumes ViT-B/16."""
    protocol = {"size": 112, "slide_crop": 112, "slide_stride": 56, "templates": "single"}
    model = METHODS[method](clip=toy_vit, inference=protocol)
    model.set_vocabulary(["red circle", "blue square", "grass"])
    image = torch.randint(0, 256, (3, 120, 150), dtype=torch.uint8)
    scores = model(image[None])
    assert scores.shape == (1, 3, 120, 150) and torch.isfinite(scores).all()


@pytest.mark.parametrize("method", ["sclip", "gem"])
def test_methods_follow_the_model_patch_size_vit_b32(method: str) -> None:
    """A ViT-B/32 (patch 32, 12 blocks): the grid, windows and GEM depth come from the model."""
    from ovs.backbones import create_clip

    model = METHODS[method](clip=create_clip("ViT-B-32", force_quick_gelu=True),
                            inference={"size": 96, "slide_crop": 64, "slide_stride": 32, "templates": "single"})
    model.set_vocabulary(["cat", "dog"])
    assert model.patch_size == 32 and model.clip.dense.num_blocks == 12
    grids: list[tuple[int, int]] = []
    policy_blocks: list[int] = []
    forward_dense = model.clip.dense.forward_dense

    def recording_forward_dense(images: torch.Tensor, policy: Any) -> Any:
        out = forward_dense(images, policy)
        grids.extend([(images.shape[-2] // 32, images.shape[-1] // 32)] * images.shape[0])
        depth = policy.parallel.depth if policy.parallel is not None else 0
        policy_blocks.append(12 - depth)
        return out

    model.clip.dense.forward_dense = recording_forward_dense  # type: ignore[method-assign]
    scores = model([torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)])[0]
    del model.clip.dense.forward_dense
    assert scores.shape == (2, 90, 120) and torch.isfinite(scores).all()
    # short side 96: a 96 x 128 image, 64 x 64 windows with stride 32 -> 2 x 3 windows of 2 x 2 patches of 32
    assert grids == [(2, 2)] * 6
    # GEM supp. §9: the parallel path runs over the last 4 of the 12 blocks; SCLIP has no parallel path
    assert set(policy_blocks) == ({8} if method == "gem" else {12})


def test_eval_tool_prints_one_table_across_datasets(voc_root: Path, tmp_path: Path) -> None:
    """``tools/eval.py --config sclip_vit_b16.yaml --datasets voc21,voc20`` with the tiny ViT on fake data."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OVS_MODEL_CONFIG_PATH=str(TEST_MODEL_CONFIGS))
    inference = '{"size": 32, "slide_crop": 24, "slide_stride": 16, "templates": "single"}'
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "eval.py"), "--config", "sclip_vit_b16.yaml",
         "--datasets", "voc21,voc20", "--dataset_root", str(voc_root), f"--model.init_args.model_name={TINY_VIT}",
         "--model.init_args.pretrained=null", f"--model.init_args.inference={inference}",
         "--trainer.accelerator=cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| dataset | mIoU |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["voc21", "voc20"]

"""Toy-CLIP helpers and the committed checkpoint: it loads and reproduces its recorded retrieval accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ovs.backbones import create_clip
from ovs.data.synthetic.toy_clip import evaluate_retrieval, random_resized_crop, render_eval_set, retrieval_recall

CHECKPOINT = Path(__file__).parents[3] / "checkpoints" / "ovs_toy_clip.pt"


def test_retrieval_recall_counts_identical_captions_as_correct() -> None:
    emb = torch.eye(4)
    assert retrieval_recall(emb, emb, ["a", "b", "c", "d"], ks=(1,)) == {"i2t_r1": 100.0, "t2i_r1": 100.0}
    swapped = emb[[1, 0, 2, 3]]
    assert retrieval_recall(emb, swapped, ["a", "b", "c", "d"], ks=(1,))["i2t_r1"] == 50.0
    assert retrieval_recall(emb, swapped, ["a", "a", "c", "d"], ks=(1,))["i2t_r1"] == 100.0
    with pytest.raises(ValueError, match="one caption per image"):
        retrieval_recall(emb, emb, ["a"])


def test_random_resized_crop() -> None:
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    out = random_resized_crop(images, 24, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    same = random_resized_crop(images.float(), 40, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0)
    assert torch.allclose(same, images.float(), atol=1e-3)


def test_eval_set() -> None:
    data = render_eval_set(6, seed=0)
    assert data.images.shape == (6, 3, 112, 112) and data.images.dtype == torch.uint8
    assert len(data.captions) == 6 and data.sem_seg.shape == (6, 112, 112)
    assert len(data.crops) == len(data.crop_labels) > 0 and int(data.crop_labels.max()) < 36


def test_committed_checkpoint_reproduces_its_recorded_retrieval() -> None:
    record = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    assert CHECKPOINT.stat().st_size < 15e6
    clip = create_clip(record["model_name"], pretrained=CHECKPOINT)
    rep = record["reproduce"]
    data = render_eval_set(rep["num_images"], rep["seed"], rep["image_size"], rep["split"])
    metrics = evaluate_retrieval(clip.model, clip.tokenizer, data, tuple(clip.pixel_mean.flatten().div(255).tolist()),
                                 tuple(clip.pixel_std.flatten().div(255).tolist()))
    for key, expected in rep["metrics"].items():
        assert abs(metrics[key] - expected) <= rep["tolerance"], (key, metrics[key], expected)
    assert rep["metrics"]["i2t_r1"] > 10 * 100 / rep["num_images"]  # far above chance

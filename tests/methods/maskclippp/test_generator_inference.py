"""MaskCLIP++ inference with mask generators end to end on a fake ADE-150 (panoptic layout): ``tools/eval.py`` with
masks from disk, and the generator path against the GT-mask oracle."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning import Trainer

from ovs.data import ADE20KDataModule
from ovs.data.fake import write_fake_ade20k
from ovs.generators import GroundTruthMasks, write_npz
from ovs.methods.maskclippp import MaskCLIPPP
from tests.conftest import TEST_MODEL_CONFIGS, TINY_VIT
from tests.methods.maskclippp.conftest import FAST

REPO_ROOT = Path(__file__).resolve().parents[3]
NUM_IMAGES = 3


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("ade")
    return root, write_fake_ade20k(root, num_images=NUM_IMAGES, height=32, width=48)


def tiny_model(**kwargs: object) -> MaskCLIPPP:
    return MaskCLIPPP(TINY_VIT, train_class_names="coco_panoptic", psm="linear", psm_width=16, eval_psm="psm",
                      **FAST, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("data_from", ["config", "preset"])
def test_eval_tool_with_confident_precomputed_masks_gives_perfect_scores(ade_root, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                        data_from: str) -> None:
    """Masks = the GT segments, logits = +20 on the true ADE class (void and others 0), γ = 1 on all-seen classes:
    the generator decides every class, so mIoU, PQ, SQ, RQ and AP must all be 100 (any misplaced mask, id, class
    column or threshold breaks it). ``--datasets ade150`` must load the panoptic annotations for a model with PQ / AP
    on, exactly as the config's own (panoptic) data section does."""
    root, fake = ade_root
    masks_dir = tmp_path / "masks"
    for stem, pan in fake.panoptic["val"].items():
        masks = np.stack([pan.ids == s["id"] for s in pan.segments])
        logits = torch.zeros(len(pan.segments), 151)
        logits[torch.arange(len(pan.segments)), torch.tensor([s["category_id"] for s in pan.segments])] = 20.0
        write_npz(masks_dir / f"{stem}.npz", torch.from_numpy(masks), logits)
    config = yaml.safe_load((REPO_ROOT / "configs" / "maskclip++_convnext_b_precomputed.yaml").read_text())
    init = config["model"]["init_args"]
    init.update({"model_name": TINY_VIT, "pretrained": None, "templates": "single", "psm": "linear",
                 "psm_width": 16, "test_short_side": None, "gamma": 1.0})
    init["generator"]["init_args"].update({"path": str(masks_dir), "training_vocabulary": "ade150"})
    config["data"]["init_args"].update({"root": str(root), "num_workers": 0})
    config["trainer"].update({"accelerator": "cpu"})
    config_file = tmp_path / "maskclip++_precomputed_test.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OVS_MODEL_CONFIG_PATH=str(TEST_MODEL_CONFIGS))
    preset = ["--datasets", "ade150", "--dataset_root", str(root)] if data_from == "preset" else []
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "eval.py"), "--config", str(config_file),
                             *preset], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    row = dict(zip(header, [cell.strip() for cell in lines[2].split("|")[1:-1]]))
    for metric in ("mIoU", "mIoU_seen", "PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP"):
        assert float(row[metric]) == pytest.approx(100.0), (metric, row)


def run_test(model: MaskCLIPPP, root: Path, tmp_path: Path) -> dict[str, float]:
    datamodule = ADE20KDataModule(variant="150", task="panoptic", root=root, seen_vocabulary="coco_panoptic")
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    return {k: float(v) for k, v in trainer.test(model, datamodule=datamodule, verbose=False)[0].items()}


def test_ground_truth_generator_matches_the_oracle_and_reports_pq_ap(ade_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With GT masks and no fusion, Σ_q softmax · mask over disjoint masks paints each mask with its argmax class:
    the generator path's mIoU equals the oracle's painted mIoU; PQ / AP are computed and finite."""
    root, _ = ade_root
    torch.manual_seed(0)
    oracle = run_test(tiny_model(), root, tmp_path)
    torch.manual_seed(0)
    generated = run_test(tiny_model(generator=GroundTruthMasks(), panoptic_on=True, instance_on=True,
                                    object_mask_threshold=0.0), root, tmp_path)
    assert "test/mask_acc" in oracle and "test/mask_acc" not in generated
    for key in ("test/mIoU", "test/mIoU_seen", "test/mIoU_unseen"):
        assert generated[key] == pytest.approx(oracle[key]) or (math.isnan(generated[key]) and math.isnan(oracle[key]))
    for key in ("test/PQ", "test/SQ", "test/RQ", "test/AP", "test/pAcc"):
        assert key in generated and math.isfinite(generated[key]), key


def test_generator_is_not_saved_and_gamma_is_validated(ade_root, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(generator=GroundTruthMasks())
    assert "generator" not in model.hparams
    assert not any(name.startswith("generator") for name in model.state_dict())
    with pytest.raises(ValueError, match="gamma"):
        tiny_model(gamma=1.5)
    with pytest.raises(ValueError, match="no training_vocabulary"):  # fusion needs the generator's seen classes
        run_test(tiny_model(generator=GroundTruthMasks(), gamma=0.5), ade_root[0], tmp_path)

"""``tools/train.py --ckpt_path last`` resumes the checkpoint: global step, weights and optimizer state continue.

The checkpoint of the first run is perturbed before resuming, so a run that restarted from scratch (same seed, same
data) cannot reproduce the expected weights; those are two AdamW steps from the perturbed checkpoint, written here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ovs.cli import train_main
from tests.cli.tiny_module import TinyCLIPRegressor, TinyDataModule

TINY_CONFIG = Path(__file__).parent / "configs" / "tiny_fit.yaml"
FULL_BATCH = "--data.init_args.batch_size=8"
"""One batch of all 8 samples per epoch: every step sees the same data whatever the position in the epoch."""


def last_checkpoint(root: Path) -> Path:
    (run,) = list((root / "outputs" / "tiny_fit").iterdir())
    return run / "checkpoints" / "last.ckpt"


def test_resume_continues_the_checkpoint_weights_and_optimizer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_main(["--config", str(TINY_CONFIG), FULL_BATCH]) == 0  # 2 steps
    path = last_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["global_step"] == 2
    g = torch.Generator().manual_seed(1)
    for key, value in checkpoint["state_dict"].items():
        if value.is_floating_point():
            value.add_(0.05 * torch.randn(value.shape, generator=g))
    torch.save(checkpoint, path)

    # Expected: the perturbed weights and the saved AdamW state, two more steps of MSE(encode_image(x), y).
    module = TinyCLIPRegressor()
    module.load_state_dict(checkpoint["state_dict"])
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    optimizer.load_state_dict(checkpoint["optimizer_states"][0])
    images, target = TinyDataModule(num_samples=8, batch_size=8).dataset().tensors
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(module.clip.model.encode_image(images), target).backward()
        optimizer.step()

    assert train_main(["--config", str(TINY_CONFIG), "--ckpt_path", "last", "--trainer.max_steps=4", FULL_BATCH]) == 0
    resumed = torch.load(last_checkpoint(tmp_path), weights_only=True)
    assert resumed["global_step"] == 4
    expected = module.state_dict()
    assert set(resumed["state_dict"]) == set(expected)
    for key, value in resumed["state_dict"].items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5, msg=key)
    moved = max(float((checkpoint["state_dict"][k] - v).abs().max()) for k, v in expected.items())
    assert moved > 1e-4  # the two steps did change the weights


@pytest.fixture(autouse=True)
def _no_run_dir_env(monkeypatch) -> None:
    monkeypatch.delenv("OVS_RUN_DIR", raising=False)

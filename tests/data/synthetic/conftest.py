"""A small synthetic benchmark generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovs.data.synthetic.generate import generate_benchmark

NUM_TRAIN = 24
NUM_VAL = 16
SEED = 3


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a generated benchmark (24 train, 16 val images of 112 px, seed 3)."""
    return generate_benchmark(tmp_path_factory.mktemp("ovs_synthetic"), NUM_TRAIN, NUM_VAL, SEED, 112)

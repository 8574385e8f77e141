"""Fixtures: every fake dataset written once per session in its real layout (ovs.data.fake)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ovs.data import fake


@dataclass
class FakeDatasets:
    """Root of the fake datasets and the ground truth each writer returned."""

    root: Path
    ade20k: fake.FakeADE20K
    ade20k_full: dict[str, Any]
    coco_panoptic: dict[str, Any]
    coco_stuff: dict[str, Any]
    coco_object: dict[str, Any]
    pascal_voc: dict[str, Any]
    pascal_context: dict[str, Any]
    cityscapes: dict[str, Any]


@pytest.fixture(scope="session")
def fake_datasets(tmp_path_factory: pytest.TempPathFactory) -> FakeDatasets:
    root = tmp_path_factory.mktemp("datasets")
    return FakeDatasets(
        root=root,
        ade20k=fake.write_fake_ade20k(root),
        ade20k_full=fake.write_fake_ade20k_full(root),
        coco_panoptic=fake.write_fake_coco_panoptic(root),
        coco_stuff=fake.write_fake_coco_stuff(root),
        coco_object=fake.write_fake_coco_object(root),
        pascal_voc=fake.write_fake_pascal_voc(root),
        pascal_context=fake.write_fake_pascal_context(root),
        cityscapes=fake.write_fake_cityscapes(root),
    )

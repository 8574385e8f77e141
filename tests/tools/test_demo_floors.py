"""Floors of the embedded demo (``tools/demo.py --quick``: 64 train / 32 val synthetic images, 5 fine-tuning steps),
checked on the quick demo run of tests/tools/test_demo.py.

The committed toy CLIP gives, on this quick split, dense mIoU 8.6-17.8 and pixel accuracy 49-85 for the training-free
methods and a GT-mask accuracy of about 21 % (docs/synthetic.md); the same pipelines with an untrained CLIP give
mIoU 0.2-1.7 and a GT-mask accuracy near chance (1 / 44 classes). The floors sit between the two, so a demo that
silently loses its weights, its vocabulary or its labels fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

TRAINING_FREE = ("clip", "maskclip", "clip_surgery", "sclip", "gem", "clearclip", "naclip")
MIOU_FLOOR, PACC_FLOOR = 5.0, 40.0
MASK_ACC_FLOOR = 15.0
FINETUNE_MARGIN = 3.0
"""Five fine-tuning steps may not help yet, but must not cost more than this many points of mask accuracy."""


def check_demo_floors(rows: list[dict[str, Any]]) -> None:
    """Assert the floors on the rows of a demo run (``results.json`` or ``demo.main``'s return value)."""
    by_method = {row["method"]: row for row in rows}
    for method in TRAINING_FREE:
        row = by_method[method]
        assert row["mIoU"] > MIOU_FLOOR and row["pAcc"] > PACC_FLOOR, row
    untrained = by_method["toy CLIP, GT masks (no fine-tuning)"]
    assert untrained["mask_acc"] > MASK_ACC_FLOOR, untrained
    for label in ("MaskCLIP++, GT masks", "MaskCLIP++, GT masks, no PSM"):
        assert by_method[label]["mask_acc"] >= untrained["mask_acc"] - FINETUNE_MARGIN, (by_method[label], untrained)


def test_floors_reject_an_untrained_clip() -> None:
    """Rows as an untrained CLIP gives them (measured with ``pretrained: null``): every floor check fails."""
    good = [{"method": m, "mIoU": 9.0, "pAcc": 50.0} for m in TRAINING_FREE] + [
        {"method": "toy CLIP, GT masks (no fine-tuning)", "mask_acc": 21.3},
        {"method": "MaskCLIP++, GT masks", "mask_acc": 22.9},
        {"method": "MaskCLIP++, GT masks, no PSM", "mask_acc": 22.9},
    ]
    check_demo_floors(good)
    for index, key, value in ((3, "mIoU", 1.2), (4, "pAcc", 30.0), (7, "mask_acc", 2.3), (8, "mask_acc", 17.0)):
        rows = [dict(row) for row in good]
        rows[index][key] = value
        with pytest.raises(AssertionError):
            check_demo_floors(rows)

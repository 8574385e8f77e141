"""Mini end-to-end run of the main job (``make demo``) on a tiny synthetic split with the committed toy CLIP: the table,
the outputs and the accuracy floors (tests/tools/test_demo_floors.py) on one run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from ovs.cli import REPO_ROOT
from tests.tools.test_demo_floors import check_demo_floors


def test_quick_demo_produces_a_finite_table_above_its_floors(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "demo.py"), "--quick", "--output", str(tmp_path / "outputs")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| method | mIoU |" in result.stdout
    runs = list((tmp_path / "outputs" / "demo").iterdir())
    assert len(runs) == 1
    rows = json.loads((runs[0] / "results.json").read_text())
    methods = [row["method"] for row in rows]
    training_free = {"clip", "maskclip", "clip_surgery", "sclip", "gem", "clearclip", "naclip"}
    assert training_free <= set(methods)
    assert "MaskCLIP++, GT masks" in methods and "MaskCLIP++, GT masks, no PSM" in methods
    for row in rows:
        assert all(math.isfinite(row[key]) for key in ("mIoU", "mIoU_seen", "mIoU_unseen"))
        assert 0.0 <= row["mIoU"] <= 100.0
    assert all(math.isfinite(row["mask_acc"]) for row in rows if "GT masks" in row["method"])
    generator = [row for row in rows if "toy generator" in row["method"]]
    assert [row["method"] for row in generator] == ["MaskCLIP++ + toy generator, γ 0",
                                                    "MaskCLIP++ + toy generator, γ 0.4"]
    assert all(math.isfinite(generator[0][key]) for key in ("PQ", "AP"))  # γ 0: panoptic and instance on
    assert "PQ" not in generator[1] and "AP" not in generator[1]  # γ 0.4: the semantic protocol only
    assert len(list(runs[0].glob("overlay_*.png"))) == len(training_free)
    check_demo_floors(rows)

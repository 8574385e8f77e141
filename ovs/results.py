"""The results table of ``tools/eval.py`` and the demo: Markdown to stdout, CSV + JSON on disk."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

#: Columns shown first, in this order, when present; other numeric metrics follow alphabetically.
PREFERRED_COLUMNS = ("mIoU", "mIoU_seen", "mIoU_unseen", "fwIoU", "mAcc", "pAcc", "PQ", "SQ", "RQ", "AP",
                     "mask_acc", "acc@1", "acc@5", "acc@10")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    keys = {k for row in rows for k in row if k not in ("dataset", "method")}
    first = [c for c in PREFERRED_COLUMNS if c in keys]
    return first + sorted(keys - set(first))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    """One Markdown table: a row per (method, dataset), a column per metric (percentages with 2 decimals)."""
    if not rows:
        return "(no results)"
    lead = [k for k in ("method", "dataset") if any(k in row for row in rows)]
    columns = lead + _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``results.csv`` and ``results.json`` into ``run_dir`` (never overwriting another run's files)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    lead = [k for k in ("method", "dataset") if any(k in row for row in rows)]
    columns = lead + _columns(rows)
    with (run_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

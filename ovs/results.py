"""The results of ``tools/eval.py`` and the demo: a Markdown table on stdout, CSV + JSON (+ per-class CSV) on disk.

Files are replaced atomically (written to a temporary file in the same folder, then renamed), so an interrupted or
failed write never leaves a half-written file, and ``tools/eval.py`` rewrites them after every dataset.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

#: Columns shown first, in this order, when present; other numeric metrics follow alphabetically.
PREFERRED_COLUMNS = ("mIoU", "mIoU_seen", "mIoU_unseen", "fwIoU", "mAcc", "pAcc", "PQ", "SQ", "RQ", "AP",
                     "mask_acc", "acc@1", "acc@5", "acc@10")
LEAD_COLUMNS = ("method", "dataset")
PER_CLASS_FILE = "per_class_iou.csv"


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    keys = {k for row in rows for k in row if k not in LEAD_COLUMNS}
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
    lead = [k for k in LEAD_COLUMNS if any(k in row for row in rows)]
    columns = lead + _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: a temporary file in the same folder, flushed, then renamed."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_results(run_dir: Path, rows: list[dict[str, Any]], provenance: dict[str, Any] | None = None) -> None:
    """Write ``results.csv`` and ``results.json`` into ``run_dir``, each atomically.

    ``results.json`` holds the rows, or ``{"provenance": ..., "results": rows}`` when ``provenance`` is given
    (``tools/eval.py``: checkpoint and hash, datasets, dataset root, protocols, ovs version, git commit).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload: Any = rows if provenance is None else {"provenance": provenance, "results": rows}
    atomic_write_text(run_dir / "results.json", json.dumps(payload, indent=2) + "\n")
    lead = [k for k in LEAD_COLUMNS if any(k in row for row in rows)]
    atomic_write_text(run_dir / "results.csv", _csv_text(rows, lead + _columns(rows)))


def write_per_class(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``per_class_iou.csv`` (one row per dataset and class: ``dataset, class`` and the per-class metrics,
    e.g. ``IoU`` in percent) atomically into ``run_dir``."""
    lead = [k for k in ("dataset", "class") if any(k in row for row in rows)]
    others = sorted({k for row in rows for k in row} - set(lead))
    atomic_write_text(Path(run_dir) / PER_CLASS_FILE, _csv_text(rows, lead + others))


def per_class_rows(dataset: str, per_class: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Rows of :func:`write_per_class` from a module's ``test_per_class`` (``{"class": [...], "IoU": [...], ...}``,
    equal-length columns)."""
    names = list(per_class.get("class", []))
    columns = {k: list(v) for k, v in per_class.items() if k != "class"}
    bad = [k for k, v in columns.items() if len(v) != len(names)]
    if bad:
        raise ValueError(f"test_per_class columns {bad} do not have one value per class ({len(names)}).")
    return [{"dataset": dataset, "class": name, **{k: float(v[i]) for k, v in columns.items()}}
            for i, name in enumerate(names)]

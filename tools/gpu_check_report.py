"""The report of ``tools/gpu_check.py``: issue 17's figures and targets from the stage results, as JSON and Markdown.

Every ratio is taken between two rows of the same run: ovs against the authors'-loop re-creation at batch 1
(``reference``), and against ovs fp32 at batch 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GEM_TARGET_IMAGES_PER_S = 400.0
"""Issue 17: GEM protocol (448 x 448) in bf16 at >= 400 images/s (the GEM paper reports 37 fps on an A6000)."""
MFU_TARGET_PCT = 40.0
"""Issue 17: model FLOPs utilisation of the ViT window evaluation >= 40 % of the chip's bf16 peak."""
TRAIN_TARGET_H = 1.0
"""Issue 17: 20k MaskCLIP++ ConvNeXt-B steps (1024 x 1024, batch 4) in <= 1 h on one GPU."""


def stage_result(report: dict[str, Any], name: str) -> Any:
    stage = next((s for s in report["stages"] if s["name"] == name), None)
    return None if stage is None else stage.get("result")


def benchmark_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for stage in report["stages"]:
        if stage["name"].startswith("bench-") and isinstance(stage.get("result"), list):
            rows += [row | {"stage": stage["name"]} for row in stage["result"]]
    return rows


def protocol_summary(rows: list[dict[str, Any]], protocol: str, method: str) -> dict[str, Any] | None:
    """Batch-1 and best-batch images/s of ovs bf16 and fp32 for ``method`` under ``protocol`` (bench stage only),
    each as a ratio to the authors' loop (batch 1) and to ovs fp32 at batch 1."""
    rows = [r for r in rows
            if r["protocol"] == protocol and r["method"] == method and r["stage"] == f"bench-{protocol}"]
    if not rows:
        return None
    summary: dict[str, Any] = {"protocol": protocol, "method": method}
    reference = next((r for r in rows if r["implementation"] == "reference"), None)
    fp32_b1 = next((r for r in rows if r["implementation"] == "ovs-fp32" and r["batch"] == 1), None)
    summary["reference_images_per_s"] = reference["images_per_s"] if reference else None
    for precision in ("bf16", "fp32"):
        ours = [r for r in rows if r["implementation"] == f"ovs-{precision}"]
        if not ours:
            continue
        batch1 = next((r for r in ours if r["batch"] == 1), None)
        best = max(ours, key=lambda r: r["images_per_s"])
        for label, row in (("batch1", batch1), ("best", best)):
            if row is None:
                continue
            summary[f"{precision}_{label}"] = {
                "batch": row["batch"], "images_per_s": row["images_per_s"], "peak_memory_mb": row["peak_memory_mb"],
                "mfu_pct": row.get("mfu_pct"),
                "x_reference": row["images_per_s"] / reference["images_per_s"] if reference else None,
                "x_ovs_fp32_batch1": row["images_per_s"] / fp32_b1["images_per_s"] if fp32_b1 else None,
                "labels_equal_pct_reference": row.get("agreement_pct_reference"),
                "labels_equal_pct_fp32": row.get("agreement_pct_ovs-fp32"),
            }
    return summary


def compile_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Speed-up of ``torch.compile`` on the window encoder against eager, same stage, batch and precision
    (``bench-compile``: default mode; ``bench-cudagraphs``: ``reduce-overhead``, i.e. CUDA graphs)."""
    out = {}
    for row in rows:
        if not row["implementation"].endswith("+compile"):
            continue
        eager = next((r for r in rows if r["stage"] == row["stage"] and r["batch"] == row["batch"]
                      and r["implementation"] == row["implementation"].removesuffix("+compile")), None)
        if eager is not None:
            out[f"{row['stage']}: {row['implementation']} ({row.get('compile_mode')}) b{row['batch']}"] = {
                "images_per_s": row["images_per_s"], "eager_images_per_s": eager["images_per_s"],
                "x_eager": row["images_per_s"] / eager["images_per_s"],
            }
    return out or None


def targets(report: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three targets against the measured figures (``None`` where not measured)."""
    gem = [r for r in rows if r["protocol"] == "gem" and r["method"] == "gem" and r["implementation"] == "ovs-bf16"
           and tuple(r["image_size"]) == (448, 448)]  # the default path (torch.compile is reported apart)
    best_gem = max((r["images_per_s"] for r in gem), default=None)
    mfus = [r["mfu_pct"] for r in rows if r.get("mfu_pct") is not None]
    train = stage_result(report, "train-bf16")
    target_run = isinstance(train, dict) and (train["model"], train["image_size"], train["batch_per_device"]) == (
        "convnext_base_w_320", 1024, 4)
    hours = train["projected_20k_steps_h"] if target_run else None
    return {
        "gem_bf16_images_per_s": {"target": f">= {GEM_TARGET_IMAGES_PER_S:g}", "measured": best_gem,
                                  "met": None if best_gem is None else best_gem >= GEM_TARGET_IMAGES_PER_S},
        "vit_window_eval_mfu_pct": {"target": f">= {MFU_TARGET_PCT:g}", "measured": max(mfus, default=None),
                                    "met": None if not mfus else max(mfus) >= MFU_TARGET_PCT},
        "maskclippp_20k_steps_h": {"target": f"<= {TRAIN_TARGET_H:g}", "measured": hours,
                                   "met": None if hours is None else hours <= TRAIN_TARGET_H},
    }


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    rows = benchmark_rows(report)
    training = {s["name"]: s["result"] for s in report["stages"]
                if s["name"].startswith("train-") and isinstance(s.get("result"), dict)}
    return {
        "protocols": [s for s in (protocol_summary(rows, "gem", "gem"), protocol_summary(rows, "sclip", "sclip")) if s],
        "compile": compile_summary(rows),
        "training": training,
        "targets": targets(report, rows),
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    env = report["environment"]
    lines = [f"# GPU check{' (dry run, CPU)' if report['dry_run'] else ''}", "",
             f"{fmt(env.get('device'))} · torch {env['torch']} (CUDA {fmt(env['cuda_runtime'])}) · Python "
             f"{env['python']} · open_clip {fmt(env.get('open_clip_torch'))} · {report['total_s']} s of "
             f"{report['budget_s']:g} s", "", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in report["stages"]]
    tests = report["tests"]
    if tests:
        lines += ["", "## CUDA tests", "",
                  f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                  f"{tests['skipped']} skipped."]
        lines += [f"* `{f['test']}`: {f['message'][:200]}" for f in tests["failing"]]
    lines += ["", "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {t['target']} | {fmt(t['measured'], 2)} | {fmt(t['met'])} |"
              for name, t in summary["targets"].items()]
    if summary["protocols"]:
        lines += ["", "## Training-free (images/s; ratios to the authors' loop and to ovs fp32, batch 1)", "",
                  "| protocol | ovs | batch | images/s | x authors' loop | x ovs fp32 b1 | peak MiB | MFU % | "
                  "labels = fp32 % |", "|---|---|---|---|---|---|---|---|---|"]
        for s in summary["protocols"]:
            lines.append(f"| {s['protocol']} | authors' loop | 1 | {fmt(s['reference_images_per_s'], 2)} | 1.0 | "
                         "| | | |")
            for key in ("fp32_batch1", "fp32_best", "bf16_batch1", "bf16_best"):
                if key in s:
                    r = s[key]
                    lines.append(f"| {s['protocol']} | {key.replace('_', ' ')} | {r['batch']} | "
                                 f"{fmt(r['images_per_s'], 2)} | {fmt(r['x_reference'], 2)} | "
                                 f"{fmt(r['x_ovs_fp32_batch1'], 2)} | {fmt(r['peak_memory_mb'], 0)} | "
                                 f"{fmt(r['mfu_pct'])} | {fmt(r['labels_equal_pct_fp32'], 2)} |")
    if summary["compile"]:
        lines += ["", "## torch.compile (window encoder)", ""]
        lines += [f"* {k}: {fmt(v['images_per_s'], 1)} vs eager {fmt(v['eager_images_per_s'], 1)} images/s "
                  f"(x{v['x_eager']:.2f})" for k, v in summary["compile"].items()]
    if summary["training"]:
        lines += ["", "## MaskCLIP++ training step", "",
                  "| stage | model | size | batch | precision | step s (median) | 20k steps h | peak |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, t in summary["training"].items():
            peak = t.get("peak_gpu_memory_GiB", t.get("peak_rss_GiB"))
            lines.append(f"| {name} | {t['model']} | {t['image_size']} | {t['batch_per_device']} | "
                         f"{t['precision']}{' channels-last' if t.get('channels_last') else ''} | "
                         f"{fmt(t['step_time_median_s'], 3)} | {fmt(t['projected_20k_steps_h'], 2)} | "
                         f"{fmt(peak, 2)} GiB |")
    rows = benchmark_rows(report)
    if rows:
        lines += ["", "## All benchmark rows", "", "| stage | protocol | method | implementation | batch | images/s | "
                  "peak MiB | GFLOP/image | MFU % |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['protocol']} | {r['method']} | {r['implementation']} | {r['batch']} | "
                  f"{fmt(r['images_per_s'], 2)} | {fmt(r['peak_memory_mb'], 0)} | "
                  f"{fmt(r['model_gflop_per_image'], 1)} | {fmt(r.get('mfu_pct'))} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    """Add the summary and write ``gpu_check.json`` and ``gpu_check.md`` into ``out``."""
    report["summary"] = summarise(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))

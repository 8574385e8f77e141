"""tools/gpu_check.py (issue 17): the dry run writes its report, stages obey their limits, the report's ratios and
targets, the wheel list, and the model-FLOP count behind the MFU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ovs.backbones import create_clip
from tests.conftest import TINY_VIT

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ovs_tool_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gpu_check = load_tool("gpu_check")
report_module = load_tool("gpu_check_report")
benchmark = load_tool("benchmark")


def test_dry_run_writes_json_and_markdown(tmp_path: Path) -> None:
    """The shell entry point in dry-run mode (install stage only, no wheels to install) writes both reports."""
    out = tmp_path / "report"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "tools" / "gpu_check.sh"), str(out), "--dry-run", "--stages", "install",
         "--wheels", str(tmp_path / "no_wheels")],
        env=os.environ | {"PYTHON": sys.executable}, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert [(s["name"], s["status"]) for s in report["stages"]] == [("install", "ok")]
    assert "imported open_clip" in (out / "logs" / "install.log").read_text()
    assert report["environment"]["torch"] == torch.__version__
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("# GPU check (dry run, CPU)") and "| install | ok |" in markdown


def test_stage_statuses_time_limit_and_budget(tmp_path: Path) -> None:
    py = sys.executable
    written = tmp_path / "result.json"
    ok = gpu_check.Stage("ok", [py, "-c", f"import json; json.dump({{'x': 1}}, open({str(written)!r}, 'w'))"], 60,
                         written)
    assert gpu_check.run_stage(ok, tmp_path, 100)["result"] == {"x": 1}
    stale = tmp_path / "stale.json"
    stale.write_text('{"from": "an earlier run"}')
    failing = gpu_check.Stage("failing", [py, "-c", "raise SystemExit(3)"], 60, stale)
    record = gpu_check.run_stage(failing, tmp_path, 100)
    assert record["status"] == "failed (exit 3)" and "result" not in record and not stale.exists()
    slow = gpu_check.Stage("slow", [py, "-c", "import time; time.sleep(30)"], 1)
    record = gpu_check.run_stage(slow, tmp_path, 100)
    assert record["status"] == "timeout (1 s)" and record["seconds"] < 20
    skipped = gpu_check.run_stage(gpu_check.Stage("late", [py, "-c", ""], 120), tmp_path, 10)
    assert skipped["status"] == "skipped" and not (tmp_path / "late.log").exists()


def test_junit_summary_counts_and_failures(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.cuda.t" name="a"/>'
        '<testcase classname="tests.cuda.t" name="b"><failure message="assert 2 &lt;= 1"/></testcase>'
        '<testcase classname="tests.cuda.t" name="c"><error message="fixture"/></testcase>'
        '<testcase classname="tests.cuda.t" name="d"><skipped/></testcase></testsuite></testsuites>'
    )
    summary = gpu_check.junit_summary(path)
    assert (summary["passed"], summary["failures"], summary["errors"], summary["skipped"]) == (1, 1, 1, 1)
    assert summary["failing"] == [{"test": "tests.cuda.t::b", "message": "assert 2 <= 1"},
                                  {"test": "tests.cuda.t::c", "message": "fixture"}]
    assert gpu_check.junit_summary(tmp_path / "absent.xml") == {}


def test_wheel_list_holds_what_the_gpu_image_lacks() -> None:
    import importlib.metadata

    requirements = gpu_check.wheel_requirements()
    names = {r.split("==")[0] for r in requirements}
    assert f"open-clip-torch=={importlib.metadata.version('open_clip_torch')}" in requirements
    assert {"pycocotools", "ftfy", "regex", "timm", "jsonargparse", "pytest"} <= names
    assert not names & {"torch", "torchvision", "lightning", "torchmetrics", "tensorboard", "numpy", "pillow"}


def test_gpu_plan_benchmark_commands_parse() -> None:
    """Every benchmark command of the GPU plan is accepted by tools/benchmark.py (checked with --device cpu)."""
    stages = [s for s in gpu_check.plan(Path("out"), dry_run=False) if s.command[1].endswith("benchmark.py")]
    assert {s.name for s in stages} == {"bench-gem", "bench-sclip", "bench-compile", "bench-all",
                                         "bench-cudagraphs"}
    for stage in stages:
        argv = ["cpu" if a == "cuda" else a for a in stage.command[2:]]
        args = benchmark.parse_args(argv)
        assert args.output == stage.output
    gem = benchmark.parse_args(["cpu" if a == "cuda" else a for a in stages[0].command[2:]])
    assert gem.batch_sizes == [1, 16, 64, 128] and gem.ours == ["ovs-bf16", "ovs-fp32"] and gem.window_batch == 128


def fake_report(train: dict) -> dict:
    row = {"method": "gem", "protocol": "gem", "image_size": [448, 448], "peak_memory_mb": 100.0,
           "model_gflop_per_image": 160.0}
    rows = [
        row | {"implementation": "reference", "precision": "fp32", "batch": 1, "images_per_s": 2.0},
        row | {"implementation": "ovs-fp32", "precision": "fp32", "batch": 1, "images_per_s": 4.0},
        row | {"implementation": "ovs-fp32", "precision": "fp32", "batch": 16, "images_per_s": 10.0},
        row | {"implementation": "ovs-bf16", "precision": "bf16", "batch": 1, "images_per_s": 8.0, "mfu_pct": 1.0},
        row | {"implementation": "ovs-bf16", "precision": "bf16", "batch": 16, "images_per_s": 500.0,
               "mfu_pct": 45.0, "agreement_pct_ovs-fp32": 99.5},
    ]
    compiled = [row | {"implementation": "ovs-bf16", "precision": "bf16", "batch": 16, "images_per_s": 500.0},
                row | {"implementation": "ovs-bf16+compile", "precision": "bf16", "batch": 16, "images_per_s": 600.0,
                       "compile_mode": "default"}]
    return {"dry_run": False, "budget_s": 450, "total_s": 1.0, "tests": {},
            "environment": {"torch": "x", "cuda_runtime": None, "python": "3"},
            "stages": [{"name": "bench-gem", "status": "ok", "seconds": 1.0, "result": rows},
                       {"name": "bench-compile", "status": "ok", "seconds": 1.0, "result": compiled},
                       {"name": "train-bf16", "status": "ok", "seconds": 1.0, "result": train}]}


def test_report_ratios_and_targets(tmp_path: Path) -> None:
    train = {"model": "convnext_base_w_320", "image_size": 1024, "batch_per_device": 4, "precision": "bf16-mixed",
             "step_time_median_s": 0.2, "projected_20k_steps_h": 1.11, "peak_gpu_memory_GiB": 30.0}
    report = fake_report(train)
    report_module.write_report(report, tmp_path)
    gem = report["summary"]["protocols"][0]
    assert gem["bf16_best"]["batch"] == 16
    assert gem["bf16_best"]["x_reference"] == pytest.approx(500 / 2)
    assert gem["bf16_best"]["x_ovs_fp32_batch1"] == pytest.approx(500 / 4)
    assert gem["fp32_best"]["x_ovs_fp32_batch1"] == pytest.approx(10 / 4)
    assert gem["bf16_batch1"]["x_reference"] == pytest.approx(8 / 2)
    compiled = report["summary"]["compile"]["bench-compile: ovs-bf16+compile (default) b16"]
    assert compiled["x_eager"] == pytest.approx(600 / 500)
    targets = report["summary"]["targets"]
    assert targets["gem_bf16_images_per_s"] == {"target": ">= 400", "measured": 500.0, "met": True}
    assert targets["vit_window_eval_mfu_pct"]["met"] is True and targets["vit_window_eval_mfu_pct"]["measured"] == 45
    assert targets["maskclippp_20k_steps_h"] == {"target": "<= 1", "measured": 1.11, "met": False}
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| gem | bf16 best | 16 | 500.00 | 250.00 | 125.00 | 100 | 45.0 | 99.50 |" in markdown
    assert "| maskclippp_20k_steps_h | <= 1 | 1.11 | **no** |" in markdown
    assert json.loads((tmp_path / "gpu_check.json").read_text())["summary"] == report["summary"]


def test_training_target_only_from_the_target_configuration(tmp_path: Path) -> None:
    toy = {"model": "ovs-toy-vit", "image_size": 112, "batch_per_device": 2, "precision": "bf16-mixed",
           "step_time_median_s": 0.1, "projected_20k_steps_h": 0.5, "peak_rss_GiB": 1.0}
    report = fake_report(toy)
    report_module.write_report(report, tmp_path)
    assert report["summary"]["targets"]["maskclippp_20k_steps_h"]["met"] is None


def explicit_vit_flops(clip) -> tuple[int, int]:
    """Profiled FLOPs of one 32 x 32 image through the tiny ViT written with explicit attention matrices
    (``need_weights=True``: ``bmm`` for q kᵀ and A v, which the profiler counts), and the token count."""
    visual = clip.model.visual
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        x = visual.conv1(image).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x).transpose(0, 1)  # [S, 1, C]
        for block in visual.transformer.resblocks:
            attn = block.attn
            h = block.ln_1(x)
            x = x + F.multi_head_attention_forward(
                h, h, h, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False,
                0.0, attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=True)[0]
            x = x + block.mlp(block.ln_2(x))
        visual.ln_post(x) @ visual.proj
    return counter.get_total_flops(), x.shape[0]


def test_vit_forward_flops_match_the_profiler() -> None:
    clip = create_clip(TINY_VIT)  # width 64, 3 blocks, patch 8, output 32
    profiled, tokens = explicit_vit_flops(clip)
    assert tokens == 1 + 4 * 4
    assert benchmark.vit_forward_flops(tokens, 64, 3, 8, 32) == profiled


def test_protocol_flops_count_every_window() -> None:
    """SCLIP: 375 x 500 -> short side 336 -> 336 x 448 -> 2 x 3 windows of 224; GEM: the whole 448 x 448 image
    (with the tiny ViT's patch 8: 28 x 28 and 56 x 56 patches)."""
    clip = create_clip(TINY_VIT)
    window = benchmark.vit_forward_flops(1 + 28 * 28, 64, 3, 8, 32)
    assert benchmark.protocol_flops_per_image(clip, "sclip", (375, 500)) == 6 * window
    assert benchmark.protocol_flops_per_image(clip, "gem", (448, 448)) == benchmark.vit_forward_flops(
        1 + 56 * 56, 64, 3, 8, 32)


def test_bf16_peak_lookup() -> None:
    assert benchmark.bf16_peak_tflops("NVIDIA H200") == 989.5
    assert benchmark.bf16_peak_tflops("NVIDIA H200 NVL") == 835.5
    assert benchmark.bf16_peak_tflops("NVIDIA GeForce RTX 4090") is None

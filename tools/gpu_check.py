"""The GPU check of issue 17: install what the GPU image lacks, run the CUDA tests, time the benchmarks, one report.

    python tools/gpu_check.py --fetch-wheels          # once, where PyPI is reachable: wheels into .whl/
    tools/gpu_check.sh outputs/gpu_check              # on the GPU machine (< 8 minutes on one H200)
    tools/gpu_check.sh outputs/gpu_check_dry --dry-run   # the same plan on the CPU, tiny models (a smoke test)

Stages, in priority order (docs/performance.md, "GPU"); each runs in a subprocess with its own log and time limit,
and a stage that no longer fits in ``--budget-s`` is skipped and reported as such:

1. ``install``: the distributions ovs needs that the interpreter lacks, from the wheels in ``--wheels``
   (``pip install --no-index --no-deps``); nothing is downloaded on the GPU machine.
2. ``tests``: ``pytest -m cuda tests/cuda`` with ``OVS_REQUIRE_CUDA=1`` (a missing GPU fails, never skips).
3. ``bench-gem`` / ``bench-sclip``: ``tools/benchmark.py`` on random ViT-B/16 weights, GEM (448 x 448) and SCLIP
   (375 x 500, 6 windows) protocols, ovs in bf16 and fp32 at batch 1 and larger batches, the authors'-loop
   re-creations at batch 1 (the baselines), model FLOPs and MFU.
4. ``train-*``: ``tools/benchmark_maskclippp.py``, MaskCLIP++ ConvNeXt-B at 1024 x 1024, batch 4: bf16, the
   fp16 default, fp32 and bf16 channels-last.
5. ``bench-compile``: GEM bf16 at the largest batch with and without ``torch.compile``.
6. ``bench-all``: every training-free method, both protocols, bf16.

The report (``gpu_check.json``, ``gpu_check.md`` in the output folder) holds the environment, every stage's status,
the test counts and failures, every benchmark row and the issue's targets against the measured figures.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))

from gpu_check_report import write_report  # noqa: E402

DEFAULT_BUDGET_S = 450
"""Wall-clock budget of all stages: 7.5 minutes, under the issue's 8 (install and report take seconds)."""
WHEEL_ROOTS = ("open_clip_torch", "pycocotools", "jsonargparse", "docstring-parser", "typeshed-client", "rich",
               "pytest", "pytest-timeout")
"""What ovs and its tests import beyond the GPU image (torch, torchvision, lightning, torchmetrics, tensorboard)."""
IMAGE_ROOTS = ("torch", "torchvision", "lightning", "torchmetrics", "tensorboard")
PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13")
"""Interpreters the wheels are fetched for (the GPU image's Python is not known in advance)."""
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
BENCH_ITERS = {"iters": "10", "warmup": "3"}


@dataclass
class Stage:
    """One step of the check: a command, its time limit (seconds) and the JSON file it writes, if any."""

    name: str
    command: list[str]
    timeout_s: int
    output: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------------------------------------------------
# Wheels: fetch (where PyPI is reachable) and install (on the GPU machine)


def requirement_names(distribution: str, extras: tuple[str, ...] = ()) -> list[str]:
    """Names of the requirements of an installed ``distribution`` (its own and those of ``extras``) that apply on
    Linux x86-64 under any Python of :data:`PYTHON_VERSIONS`."""
    from packaging.requirements import Requirement

    names = []
    for line in importlib.metadata.distribution(distribution).requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(
            requirement.marker.evaluate({"python_version": v, "python_full_version": f"{v}.0", "extra": extra,
                                         "sys_platform": "linux", "platform_system": "Linux",
                                         "platform_machine": "x86_64", "implementation_name": "cpython"})
            for v in PYTHON_VERSIONS for extra in ("", *extras)
        ):
            names.append(requirement.name)
    return names


def closure(roots: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version (``None`` when not installed here) of every distribution the roots need, recursively."""
    found: dict[str, str | None] = {}
    stack = [(root, ("signatures",) if root == "jsonargparse" else ()) for root in roots]
    while stack:
        name, extras = stack.pop()
        key = normalise(name)
        if key in found:
            continue
        try:
            found[key] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[key] = None  # needed on another Python only (e.g. tomli on 3.10): fetched unpinned
            continue
        stack += [(dep, ()) for dep in requirement_names(name, extras)]
    return found


def wheel_requirements() -> list[str]:
    """Pinned requirements of the wheels to carry: what ovs needs minus what the GPU image's stack needs."""
    image = closure(IMAGE_ROOTS)
    needed = closure(WHEEL_ROOTS)
    return sorted(f"{name}=={version}" if version else name for name, version in needed.items() if name not in image)


def fetch_wheels(folder: Path) -> int:
    """Download the wheels of :func:`wheel_requirements` for every Python of :data:`PYTHON_VERSIONS` (binary only).

    The versions installed here come first; where one has no wheel for a Python (e.g. it needs a newer one), that
    requirement alone falls back to the newest version that has one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    requirements = wheel_requirements()
    for version in PYTHON_VERSIONS:
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                    str(folder), "--python-version", version, "--implementation", "cp",
                    *[f"--platform={p}" for p in PLATFORMS]]
        if subprocess.run([*download, *requirements], check=False).returncode == 0:
            continue
        for requirement in requirements:
            if subprocess.run([*download, requirement], check=False, capture_output=True).returncode != 0:
                subprocess.run([*download, requirement.split("==")[0]], check=True)
    size = sum(p.stat().st_size for p in folder.glob("*.whl"))
    print(f"{len(list(folder.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {folder}")
    return size


def wheel_distribution(path: Path) -> str:
    return normalise(path.name.split("-")[0])


def missing_distributions(folder: Path) -> list[str]:
    """Distributions with a wheel in ``folder`` that this interpreter does not have."""
    missing = set()
    for wheel in folder.glob("*.whl"):
        name = wheel_distribution(wheel)
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.add(name)
    return sorted(missing)


IMPORT_CHECK = ("open_clip", "timm", "pycocotools", "jsonargparse", "rich", "pytest", "ovs", "ovs.cli")
"""Modules the stages import: checked after the installation, so that a broken environment fails here, once."""


def install(folder: Path, site: Path, dry_run: bool) -> None:
    """Install the distributions of ``folder`` this interpreter lacks (``pip install --no-index --no-deps``; dry run:
    ``pip install --dry-run``), then import :data:`IMPORT_CHECK`. Where pip may not install into the interpreter
    (an externally managed system Python), the wheels go to ``site``, which every stage has on its ``PYTHONPATH``."""
    missing = missing_distributions(folder) if folder.is_dir() else []
    print(f"wheels in {folder}: {len(list(folder.glob('*.whl'))) if folder.is_dir() else 0}; missing here: {missing}")
    if missing:
        pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(folder)]
        if dry_run:
            subprocess.run([*pip, "--dry-run", *missing], check=True)
        elif subprocess.run([*pip, *missing], check=False).returncode != 0:
            print(f"installing into {site} instead")
            subprocess.run([*pip, "--target", str(site), *missing], check=True)
            sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    for module in IMPORT_CHECK:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise SystemExit(
                f"gpu_check: cannot import {module} ({err}). Fetch the wheels where PyPI is reachable "
                f"(python tools/gpu_check.py --fetch-wheels) and bring {folder.name}/ with the tree (device run tool: "
                f"carry=['{folder.name}'])."
            ) from err
    print(f"imported {', '.join(IMPORT_CHECK)}")


def install_stage(folder: Path, site: Path, dry_run: bool) -> Stage:
    command = [sys.executable, str(Path(__file__).resolve()), "--install", "--wheels", str(folder), "--site", str(site)]
    return Stage("install", command + (["--dry-run"] if dry_run else []), 180)


# --------------------------------------------------------------------------------------------------------------------
# The plan


def plan(out: Path, dry_run: bool) -> list[Stage]:
    """The stages after ``install``; ``dry_run`` shrinks every one to a CPU smoke run of the same code paths."""
    py = sys.executable
    bench, train = str(REPO_ROOT / "tools" / "benchmark.py"), str(REPO_ROOT / "tools" / "benchmark_maskclippp.py")
    tests = [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(REPO_ROOT / "tests" / "cuda"),
             f"--junitxml={out / 'junit.xml'}"]
    if dry_run:
        tiny = ["--device", "cpu", "--model", "ovs-toy-vit", "--image-size", "64,64", "--iters", "1", "--warmup", "0"]
        toy_train = ["--device", "cpu", "--model", "ovs-toy-vit", "--size", "112", "--batch", "2", "--steps", "1",
                     "--warmup", "1", "--masks", "3"]
        return [
            Stage("tests", [*tests, "--collect-only"], 300, out / "junit.xml"),
            Stage("bench-gem", [py, bench, *tiny, "--methods", "gem", "--protocol", "gem", "--precisions",
                                "bf16,fp32", "--batch-sizes", "1,2", "--json", str(out / "bench_gem.json")], 600,
                  out / "bench_gem.json"),
            Stage("train-bf16", [py, train, *toy_train, "--precision", "bf16-mixed", "--json",
                                 str(out / "train_bf16.json")], 600, out / "train_bf16.json"),
        ]
    vit = [*sum(([f"--{k}", v] for k, v in BENCH_ITERS.items()), []), "--device", "cuda", "--window-batch", "128"]
    convnext = ["--device", "cuda", "--model", "convnext_base_w_320", "--size", "1024", "--batch", "4"]
    return [
        Stage("tests", tests, 240, out / "junit.xml", {"OVS_REQUIRE_CUDA": "1"}),
        Stage("bench-gem", [py, bench, *vit, "--methods", "gem", "--protocol", "gem", "--precisions", "bf16,fp32",
                            "--batch-sizes", "1,16,64,128", "--json", str(out / "bench_gem.json")], 150,
              out / "bench_gem.json"),
        Stage("bench-sclip", [py, bench, *vit, "--methods", "sclip", "--protocol", "sclip", "--precisions",
                              "bf16,fp32", "--batch-sizes", "1,16,64", "--json", str(out / "bench_sclip.json")], 120,
              out / "bench_sclip.json"),
        Stage("train-bf16", [py, train, *convnext, "--precision", "bf16-mixed", "--steps", "15", "--warmup", "5",
                             "--json", str(out / "train_bf16.json")], 90, out / "train_bf16.json"),
        Stage("train-fp16", [py, train, *convnext, "--precision", "16-mixed", "--steps", "15", "--warmup", "5",
                             "--json", str(out / "train_fp16.json")], 90, out / "train_fp16.json"),
        Stage("train-fp32", [py, train, *convnext, "--precision", "32-true", "--steps", "5", "--warmup", "2",
                             "--json", str(out / "train_fp32.json")], 90, out / "train_fp32.json"),
        Stage("train-bf16-channels-last", [py, train, *convnext, "--precision", "bf16-mixed", "--channels-last",
                                           "--steps", "15", "--warmup", "5", "--json",
                                           str(out / "train_bf16_cl.json")], 90, out / "train_bf16_cl.json"),
        Stage("bench-compile", [py, bench, *vit, "--methods", "gem", "--protocol", "gem", "--precisions", "bf16",
                                "--compile", "--no-baseline", "--batch-sizes", "128", "--json",
                                str(out / "bench_compile.json")], 180, out / "bench_compile.json"),
        Stage("bench-all", [py, bench, *vit, "--precisions", "bf16", "--no-baseline", "--batch-sizes", "64",
                            "--json", str(out / "bench_all.json")], 150, out / "bench_all.json"),
        Stage("bench-cudagraphs", [py, bench, *vit, "--methods", "gem", "--protocol", "gem", "--precisions", "bf16",
                                   "--compile", "--compile-mode", "reduce-overhead", "--no-baseline",
                                   "--batch-sizes", "128", "--json", str(out / "bench_cudagraphs.json")], 180,
              out / "bench_cudagraphs.json"),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Running


def run_stage(stage: Stage, logs: Path, remaining_s: float, site: Path | None = None) -> dict[str, Any]:
    """Run one stage within ``min(stage.timeout_s, remaining_s)``, with the repository and ``site`` on its
    ``PYTHONPATH``; its output goes to ``logs/<name>.log``."""
    record: dict[str, Any] = {"name": stage.name, "command": " ".join(stage.command), "timeout_s": stage.timeout_s}
    limit = min(stage.timeout_s, remaining_s)
    if limit < min(30, stage.timeout_s):
        return record | {"status": "skipped", "seconds": 0.0, "reason": f"{remaining_s:.0f} s of budget left"}
    paths = [str(REPO_ROOT), str(site) if site else None, os.environ.get("PYTHONPATH")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, paths))}
    log = logs / f"{stage.name}.log"
    if stage.output is not None:
        stage.output.unlink(missing_ok=True)  # never report an earlier run's file
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            result = subprocess.run(stage.command, stdout=handle, stderr=subprocess.STDOUT, env=env | stage.env,
                                    cwd=REPO_ROOT, timeout=limit, check=False)
            status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({limit:.0f} s)"
    record |= {"status": status, "seconds": round(time.perf_counter() - start, 1), "log": str(log)}
    if stage.output is not None and stage.output.exists() and stage.output.suffix == ".json":
        try:
            record["result"] = json.loads(stage.output.read_text())
        except json.JSONDecodeError as err:  # cut off by the time limit while writing
            record["result_error"] = str(err)
    return record


def junit_summary(path: Path) -> dict[str, Any]:
    """Counts and failing test ids of a pytest JUnit XML file (``{}`` when absent)."""
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    failing = []
    for case in suite.iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failing.append({"test": f"{case.get('classname')}::{case.get('name')}",
                            "message": (problem.get("message") or "")[:500]})
    return counts | {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                     "failing": failing}


def environment() -> dict[str, Any]:
    """Python, torch, CUDA and device of this interpreter (imports torch in a subprocess-free way)."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_runtime": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "host": platform.node(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"device": props.name, "device_memory_GiB": round(props.total_memory / 2**30, 1),
                 "capability": f"{props.major}.{props.minor}"}
    for name in ("torchvision", "lightning", "open_clip_torch", "timm"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="report folder (created)")
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke run of the plan with tiny models")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock budget of the stages")
    parser.add_argument("--stages", default=None, help="comma-separated subset of the stages (default: all)")
    parser.add_argument("--wheels", type=Path, default=REPO_ROOT / ".whl", help="folder of carried wheels")
    parser.add_argument("--fetch-wheels", action="store_true",
                        help="download the wheels the GPU image lacks into --wheels and exit (needs PyPI)")
    parser.add_argument("--install", action="store_true", help=argparse.SUPPRESS)  # the install stage itself
    parser.add_argument("--site", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.fetch_wheels or args.install) and args.out is None:
        parser.error("give the report folder (or --fetch-wheels).")
    if args.budget_s <= 0:
        parser.error("--budget-s must be > 0.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.fetch_wheels:
        fetch_wheels(args.wheels)
        return {}
    if args.install:
        install(args.wheels, args.site, args.dry_run)
        return {}
    out: Path = args.out.resolve()
    logs, site = out / "logs", out / "site"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages = [install_stage(args.wheels, site, args.dry_run), *plan(out, args.dry_run)]
    if args.stages is not None:
        wanted = set(args.stages.split(","))
        unknown = wanted - {s.name for s in stages}
        if unknown:
            raise SystemExit(f"gpu_check: unknown stages {sorted(unknown)}; the plan has "
                             f"{[s.name for s in stages]}.")
        stages = [s for s in stages if s.name in wanted]
    records = []
    for stage in stages:
        record = run_stage(stage, logs, args.budget_s - (time.perf_counter() - start), site)
        print(f"[gpu_check] {stage.name}: {record['status']} ({record['seconds']} s)", flush=True)
        records.append(record)
    sys.path.insert(0, str(site))  # versions of what the install stage may have put there
    report = {
        "dry_run": args.dry_run,
        "environment": environment(),
        "budget_s": args.budget_s,
        "total_s": round(time.perf_counter() - start, 1),
        "stages": records,
        "tests": junit_summary(out / "junit.xml"),
    }
    write_report(report, out)
    print(f"[gpu_check] report: {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return report


if __name__ == "__main__":
    main()

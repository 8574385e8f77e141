"""Mutation check: do the tests catch deliberate one-line breakages of the numerical code?

Each entry of :data:`MUTANTS` names a source file, a snippet that must occur exactly once in it, the snippet that
replaces it (the "mutant") and the test files (or pytest node ids) that should fail under it. The script copies the
repository (``git ls-files`` tracked + untracked, non-ignored files, with their working-tree contents) into a
temporary directory, checks that the listed tests pass there unmutated, then applies one mutant at a time *in the
copy*, runs its tests and restores the file. The working tree is never written to.

    python tools/mutation_check.py                 # every mutant (several minutes on 2 cores)
    python tools/mutation_check.py --only pq_      # mutants whose name contains "pq_" (--exclude: the others)
    python tools/mutation_check.py --list          # names, files and tests only

Run it before closing a change to a numerical module, and add a mutant for each behaviour the change introduces.
Exit status: 0 when every mutant is caught, 1 when one survives or its snippet no longer occurs (stale entry).
Not part of CI (docs/architecture.md, "Tests that catch what matters").
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CACHES = ("datasets",)
"""Ignored directories linked (not copied) into the copy: generated data caches the tests read."""


@dataclass(frozen=True)
class Mutant:
    """One deliberate breakage: ``original`` (exactly once in ``path``) becomes ``mutant``; ``tests`` must fail."""

    name: str
    path: str
    original: str
    mutant: str
    tests: tuple[str, ...]


PANOPTIC = "ovs/evaluation/panoptic.py"
PQ_TESTS = ("tests/evaluation/test_panoptic_thresholds.py", "tests/evaluation/test_panoptic.py")
POS_TESTS = ("tests/backbones/test_pos_embed_modes.py",)
SAMPLER_TESTS = ("tests/data/test_sampler_seeds.py",)
IGNORE_EMPTY_TESTS = ("tests/methods/maskclippp/test_ignore_empty.py",)
DEMO_TESTS = ("tests/tools/test_demo.py",)
TRANSFORM_TESTS = ("tests/data/test_transforms.py",)

MUTANTS: tuple[Mutant, ...] = (
    # Panoptic quality (maskclippp.md §9.1): the IoU > 0.5 match and the void-corrected union.
    Mutant("pq_threshold_ge", PANOPTIC, "(iou > 0.5)", "(iou >= 0.5)", PQ_TESTS),
    Mutant("pq_threshold_045", PANOPTIC, "(iou > 0.5)", "(iou > 0.45)", PQ_TESTS),
    Mutant("pq_threshold_03", PANOPTIC, "(iou > 0.5)", "(iou > 0.3)", PQ_TESTS),
    Mutant("pq_threshold_02", PANOPTIC, "(iou > 0.5)", "(iou > 0.2)", PQ_TESTS),
    Mutant("pq_union_keeps_void", PANOPTIC, "- pair - void_overlap[None]", "- pair", PQ_TESTS),
    Mutant("pq_fp_void_half", PANOPTIC, "pred_area.double() <= 0.5)", "pred_area.double() < 0.25)", PQ_TESTS),
    # MaskCLIP++ ConvNeXt mask pooling, φ = L1 normalisation (eq. 1, spec §3.2).
    Mutant("convnext_pool_no_l1", "ovs/methods/maskclippp/encoders.py", "weights = masks / (areas[:, None] + 1e-6)",
           "weights = masks", ("tests/methods/maskclippp/test_pooling_strength.py",)),
    # Positional-embedding interpolation variants (training-free spec §1.1, MaskCLIP++ spec §3.3).
    Mutant("pos_bilinear_corners", "ovs/backbones/vit.py", 'mode="bilinear", align_corners=False)',
           'mode="bilinear", align_corners=True)', POS_TESTS),
    Mutant("pos_bilinear_is_bicubic", "ovs/backbones/vit.py", 'mode="bilinear", align_corners=False)',
           'mode="bicubic", align_corners=False)', POS_TESTS),
    Mutant("pos_bicubic_corners_off", "ovs/backbones/vit.py", 'size=grid, mode="bicubic", align_corners=True)',
           'size=grid, mode="bicubic", align_corners=False)', POS_TESTS),
    Mutant("pos_surgery_default_mode", "ovs/methods/training_free.py", 'default_pos_embed = "bilinear"',
           'default_pos_embed = "dino"', POS_TESTS),
    # Resumable sampler and worker seeding.
    Mutant("sampler_ignores_seed", "ovs/data/sampler.py", "SeedSequence([self.seed, self.epoch, position])",
           "SeedSequence([0, self.epoch, position])", SAMPLER_TESTS),
    Mutant("worker_seed_constant", "ovs/data/sampler.py", "manual_seed(self.sampler.seed + self.epoch)",
           "manual_seed(0)", SAMPLER_TESTS),
    # tools/train.py --ckpt_path last: restart from scratch in the same run directory instead of resuming.
    Mutant("resume_from_scratch", "ovs/cli.py", "ckpt_path=ckpt, config_filename=filename",
           "ckpt_path=None, config_filename=filename", ("tests/cli/test_resume_strength.py",)),
    # MaskCLIP++ IGNORE_EMPTY (spec §5) and its per-architecture default.
    Mutant("ignore_empty_keeps_vanished", "ovs/methods/maskclippp/module.py", "keep &= embeddings.areas > 0",
           "keep &= embeddings.areas >= 0", IGNORE_EMPTY_TESTS),
    Mutant("ignore_empty_vit_default", "ovs/methods/maskclippp/module.py",
           '"vit": {"psm": "linear", "clip_lr_multiplier": 1e-2, "ignore_empty": True',
           '"vit": {"psm": "linear", "clip_lr_multiplier": 1e-2, "ignore_empty": False', IGNORE_EMPTY_TESTS),
    Mutant("ignore_empty_convnext_default", "ovs/methods/maskclippp/module.py",
           '"convnext": {"psm": "pseudo_text", "clip_lr_multiplier": 1e-3, "ignore_empty": False',
           '"convnext": {"psm": "pseudo_text", "clip_lr_multiplier": 1e-3, "ignore_empty": True', IGNORE_EMPTY_TESTS),
    # GEM adaptive temperature: ‖ln_1(x)‖, not ‖x‖ (GEM eq. 4 as coded).
    Mutant("gem_temperature_of_x", "ovs/methods/training_free.py", "return inputs.h.norm(dim=-1).mean(dim=-1)",
           "return inputs.x.norm(dim=-1).mean(dim=-1)", ("tests/methods/test_gem_temperature.py",)),
    # The embedded demo with an untrained CLIP (a dense method and the MaskCLIP++ oracle).
    Mutant("demo_sclip_untrained", "configs/sclip_toy_synthetic.yaml", "pretrained: checkpoints/ovs_toy_clip.pt",
           "pretrained: null", DEMO_TESTS),
    Mutant("demo_maskclippp_untrained", "configs/maskclip++_toy_synthetic.yaml",
           "pretrained: checkpoints/ovs_toy_clip.pt", "pretrained: null", DEMO_TESTS),
    # Weak tests strengthened by issue 16.
    Mutant("oracle_semantic_masks_drop_last_class", "ovs/data/transforms.py",
           "labels = torch.unique(valid)  # [N], sorted", "labels = torch.unique(valid)[:-1]  # [N], sorted",
           ("tests/methods/maskclippp/test_module.py::test_gt_oracle_on_semantic_labels_uses_one_mask_per_class",)),
    Mutant("coco_panoptic_category_ids", "ovs/data/coco.py", "64, 65, 67, 70, 72", "64, 65, 66, 70, 72",
           ("tests/data/test_datasets.py",)),
    Mutant("category_to_contiguous_off_by_one", "ovs/data/base.py",
           'self.category_to_contiguous = {c["id"]: index for index, c in enumerate(categories)}',
           'self.category_to_contiguous = {c["id"]: index for index, c in enumerate(categories, 1)}',
           ("tests/data/test_datasets.py",)),
    Mutant("gem_default_depth", "ovs/methods/training_free.py", "(6 if gem_package_defaults else 4)",
           "(6 if gem_package_defaults else 3)",
           ("tests/methods/test_training_free_module.py::test_methods_follow_the_model_patch_size_vit_b32",)),
    Mutant("overlay_target_panel_shows_prediction", "ovs/evaluation/visualize.py",
           "panels.append(overlay(image, target, palette))", "panels.append(overlay(image, prediction, palette))",
           ("tests/evaluation/test_visualize.py",)),
    Mutant("long_side_truncates", "ovs/data/transforms.py",
           "return resize_image(image, (int(height * scale + 0.5), int(width * scale + 0.5)), antialias=False)",
           "return resize_image(image, (int(height * scale), int(width * scale)), antialias=False)", TRANSFORM_TESTS),
    Mutant("random_crop_left_fixed", "ovs/data/transforms.py", "left = _randint(width - crop_w + 1, generator)",
           "left = _randint(1, generator)", TRANSFORM_TESTS),
    Mutant("brightness_one_sided", "ovs/data/transforms.py",
           "_uniform(-self.brightness_delta, self.brightness_delta, generator)",
           "_uniform(0.0, self.brightness_delta, generator)", TRANSFORM_TESTS),
    Mutant("hue_shift_halved", "ovs/data/transforms.py", "shift / 180.0", "shift / 360.0", TRANSFORM_TESTS),
    Mutant("toy_clip_retrieval_t2i_as_i2t", "ovs/data/synthetic/toy_clip.py",
           "top_i = sim.T.topk(min(k, n), dim=1).indices", "top_i = sim.topk(min(k, n), dim=1).indices",
           ("tests/data/synthetic/test_toy_clip.py",)),
)


def repository_files(root: Path) -> list[str]:
    """Tracked and untracked, non-ignored files of the working tree (their current contents are copied)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True)
    return sorted({name for name in out.stdout.decode().split("\0") if name})


def copy_repository(root: Path, target: Path) -> None:
    """Copy the working tree's files into ``target`` and link the shared data caches."""
    for name in repository_files(root):
        source = root / name
        if not source.is_file():  # deleted in the working tree but still tracked
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    for cache in SHARED_CACHES:
        if (root / cache).is_dir():
            (target / cache).symlink_to(root / cache, target_is_directory=True)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    """``pytest -x -q`` on ``tests`` inside the copy, importing the copy's ``ovs`` (not the editable install)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode, lines[-1] if lines else ""


def check_imports_copy(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy))
    found = subprocess.run([sys.executable, "-c", "import ovs; print(ovs.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"The copy imports ovs from {found}, not from {copy}; mutants would not be exercised.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutants whose name contains this string")
    parser.add_argument("--exclude", default=None, help="skip the mutants whose name contains this string")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--skip-baseline", action="store_true", help="do not check that the tests pass unmutated")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mutants = [m for m in MUTANTS if args.only in m.name and not (args.exclude and args.exclude in m.name)]
    if args.list:
        for m in mutants:
            print(f"{m.name:40s} {m.path:45s} {' '.join(m.tests)}")
        return 0
    if not mutants:
        raise SystemExit(f"No mutant name contains {args.only!r}; see --list.")
    with tempfile.TemporaryDirectory(prefix="ovs-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repository(REPO_ROOT, copy)
        check_imports_copy(copy)
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            code, summary = run_tests(copy, tests, args.timeout * 2)
            if code != 0:
                raise SystemExit(f"The tests fail without any mutant ({summary}); fix them first.")
            print(f"baseline: {summary}")
        caught, rows = 0, []
        for m in mutants:
            path = copy / m.path
            text = path.read_text()
            if text.count(m.original) != 1:
                rows.append((m.name, f"STALE: the original occurs {text.count(m.original)} times in {m.path}"))
                continue
            start = time.perf_counter()
            try:
                path.write_text(text.replace(m.original, m.mutant))
                code, summary = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(text)
            seconds = time.perf_counter() - start
            if code == 1:
                caught += 1
                verdict = "caught"
            elif code == 0:
                verdict = "SURVIVED"
            else:
                verdict = f"ERROR (pytest exit {code})"
            rows.append((m.name, f"{verdict:10s} {seconds:6.1f} s  {summary}"))
            print(f"{m.name:40s} {rows[-1][1]}", flush=True)
    print(f"\ncaught {caught} / {len(mutants)} mutants")
    for name, outcome in rows:
        if not outcome.startswith("caught"):
            print(f"  {name}: {outcome}")
    return 0 if caught == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())

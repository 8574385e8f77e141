"""Runs a user can trust (issue 10): checkpoints, per-dataset results, run directories, DDP metrics, one-line errors,
provenance, loader options, cwd-independent paths, console scripts, eval-only methods, progress.

Most tests call the entry points in-process (``train_main`` / ``eval_main`` return the exit status); the 2-process
DDP test launches ``tools/eval.py`` as a user would.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ovs.cli import REPO_ROOT, eval_main, train_main
from ovs.data import load_class_names
from ovs.data.fake import write_fake_pascal_context, write_fake_pascal_voc
from tests.cli.tiny_module import TinyCLIPRegressor, TinyDataModule
from tests.conftest import TEST_MODEL_CONFIGS

CONFIGS = Path(__file__).parent / "configs"
TINY_FIT = CONFIGS / "tiny_fit.yaml"
TINY_EVAL = CONFIGS / "tiny_eval.yaml"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake VOC (3 images) and Pascal Context (2 images) in their real layouts."""
    root = tmp_path_factory.mktemp("datasets")
    write_fake_pascal_voc(root, num_images=3, height=32, width=48)
    write_fake_pascal_context(root, num_images=2, height=32, width=48)
    return root


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVS_DEBUG", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder with two runs of tiny_fit.yaml: 2 steps, then (newest) 4 steps."""
    out = tmp_path_factory.mktemp("trained")
    assert train_main(["--config", str(TINY_FIT), "--output_dir", str(out)]) == 0
    assert train_main(["--config", str(TINY_FIT), "--output_dir", str(out), "--trainer.max_steps=4"]) == 0
    return out


def runs(output: Path, name: str) -> list[Path]:
    folder = output / name
    return sorted(folder.iterdir()) if folder.is_dir() else []


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def hand_mse(checkpoint: Path | None) -> float:
    """``test/mse`` of TinyCLIPRegressor by hand: the module's image embeddings against the targets."""
    torch.manual_seed(0)
    model = TinyCLIPRegressor()
    if checkpoint is not None:
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"])
    images, targets = TinyDataModule().dataset().tensors
    with torch.no_grad():
        embeddings = model.clip.model.encode_image(images)
    return float(((embeddings - targets) ** 2).mean())


# 1 + 9 --------------------------------------------------------------------------------------------------------------


def test_eval_ckpt_last_tests_the_newest_run_and_ovs_eval_returns_0(trained: Path, workdir: Path, capsys) -> None:
    out = trained
    first, second = runs(out, "tiny_fit")[:2]
    newest = second / "checkpoints" / "last.ckpt"
    capsys.readouterr()

    (ovs_eval,) = entry_points(group="console_scripts", name="ovs-eval")
    status = ovs_eval.load()(["--config", str(TINY_FIT), "--ckpt_path", "last", "--output_dir", str(out)])
    captured = capsys.readouterr()
    assert status == 0 and "| tiny_fit |" in captured.out and "| tiny_fit |" not in captured.err
    evaluation = runs(out, "tiny_fit")[-1]
    result = json.loads((evaluation / "results.json").read_text())
    mse = result["results"][0]["mse"]
    assert mse == pytest.approx(hand_mse(newest), rel=1e-5)
    assert abs(mse - hand_mse(None)) > 1e-4 and abs(mse - hand_mse(first / "checkpoints" / "last.ckpt")) > 1e-4
    provenance = result["provenance"]
    assert provenance["checkpoint"] == str(newest.resolve())
    assert provenance["checkpoint_sha256"] == hashlib.sha256(newest.read_bytes()).hexdigest()
    assert provenance["ovs_version"] and "git_commit" in provenance
    assert f"# checkpoint: {newest.resolve()}" in (evaluation / "config.yaml").read_text()


def test_checkpoints_that_do_not_fit_or_are_truncated_stop_with_one_line(trained: Path, workdir: Path,
                                                                          capsys) -> None:
    out = trained
    before = runs(out, "tiny_fit")
    checkpoint = before[0] / "checkpoints" / "last.ckpt"
    truncated = workdir / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    capsys.readouterr()
    cases = [
        (["--ckpt_path", str(truncated)], str(truncated)),
        (["--ckpt_path", str(checkpoint), "--model.init_args.model_name=ovs-test-tiny-convnext"], str(checkpoint)),
        (["--ckpt_path", str(workdir / "missing.ckpt")], str(workdir / "missing.ckpt")),
    ]
    for args, named in cases:
        assert eval_main(["--config", str(TINY_FIT), "--output_dir", str(out), *args]) == 1
        lines = error_lines(capsys)
        assert len(lines) <= 5 and named in lines[0], lines
    assert runs(out, "tiny_fit") == before  # failed evaluations left no folders


# 2 + 6 --------------------------------------------------------------------------------------------------------------


def test_missing_dataset_stops_before_the_first_image(workdir: Path, datasets: Path, capsys) -> None:
    args = ["--config", str(TINY_EVAL), "--datasets", "voc21,coco_stuff", "--dataset_root", str(datasets)]
    assert eval_main([*args, "--output_dir", str(workdir / "out")]) == 1
    captured = capsys.readouterr()
    assert "Testing" not in captured.out
    assert "coco_stuff" in captured.err and str(datasets) in captured.err
    assert runs(workdir / "out", "tiny_eval") == []


def test_results_of_finished_datasets_survive_a_failing_one(workdir: Path, datasets: Path, capsys,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("broken")
    write_fake_pascal_voc(root, num_images=3, height=32, width=48)
    write_fake_pascal_context(root, num_images=2, height=32, width=48)
    bad = sorted((root / "pascal_ctx_d2" / "images" / "validation").iterdir())[1]
    bad.write_bytes(b"not an image")
    out = workdir / "out"
    status = eval_main(["--config", str(TINY_EVAL), "--datasets", "voc21,pc59", "--dataset_root", str(root),
                        "--output_dir", str(out)])
    captured = capsys.readouterr()
    assert status == 1 and bad.name in captured.err and len(captured.err.strip().splitlines()) <= 5
    assert "Testing voc21" in captured.out and "| voc21 |" in captured.out  # progress and table of what finished
    (run,) = runs(out, "tiny_eval")
    result = json.loads((run / "results.json").read_text())
    assert [row["dataset"] for row in result["results"]] == ["voc21"]
    assert 0.0 <= result["results"][0]["mIoU"] <= 100.0
    assert not list(run.glob(".*.tmp"))

    provenance = result["provenance"]
    assert provenance["datasets"] == ["voc21", "pc59"] and provenance["dataset_root"] == str(root.resolve())
    assert provenance["protocols"]["voc21"]["protocol"] == "maskclippp"
    assert provenance["protocols"]["voc21"]["class_names"] == "voc21"
    assert provenance["protocols"]["voc21"]["inference"]["slide_crop"] == 24  # the config's override was used
    header = (run / "config.yaml").read_text()
    assert "# datasets: ['voc21', 'pc59']" in header and "# git_commit:" in header

    scalars = EventAccumulator(str(run)).Reload().Tags()["scalars"]
    assert "test/voc21/mIoU" in scalars and "test/mIoU" not in scalars

    with (run / "per_class_iou.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = [n[0] for n in load_class_names("voc21")]
    assert [row["class"] for row in rows] == names and {row["dataset"] for row in rows} == {"voc21"}
    # detectron2 mIoU: mean IoU over the classes present in the ground truth, from the labels written on disk
    labels = write_fake_pascal_voc(tmp_path_factory.mktemp("labels"), num_images=3, height=32, width=48)["21"]
    present = sorted({int(v) for label in labels.values() for v in label.flatten().tolist() if v != 255})
    mean = sum(float(rows[c]["IoU"]) for c in present) / len(present)
    assert mean == pytest.approx(result["results"][0]["mIoU"], abs=1e-6)


def test_table_is_printed_when_results_cannot_be_written(workdir: Path, datasets: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("ovs.cli_eval.write_results", full_disk)
    assert eval_main(["--config", str(TINY_EVAL), "--datasets", "voc21,voc20", "--dataset_root", str(datasets),
                      "--output_dir", str(workdir / "out")]) == 1
    captured = capsys.readouterr()
    assert "| voc21 |" in captured.out and "| voc20 |" in captured.out  # every dataset was still evaluated
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) <= 5 and "No space left on device" in lines[0] and "--output_dir" in lines[0]


def test_maskclippp_writes_per_class_iou(workdir: Path, tmp_path_factory: pytest.TempPathFactory, capsys) -> None:
    from ovs.data.fake import write_fake_coco_stuff

    root = tmp_path_factory.mktemp("coco")
    write_fake_coco_stuff(root, num_images=2, height=32, width=32)
    config = workdir / "maskclippp_tiny.yaml"
    config.write_text(
        "model:\n  class_path: ovs.methods.maskclippp.MaskCLIPPP\n  init_args:\n    model_name: ovs-test-tiny-vit\n"
        "    pretrained: null\n    templates: single\n    psm: linear\n    eval_psm: both\n"
        "trainer:\n  accelerator: cpu\n  devices: 1\n"
    )
    out = workdir / "out"
    assert eval_main(["--config", str(config), "--datasets", "coco_stuff", "--dataset_root", str(root),
                      "--output_dir", str(out)]) == 0
    (run,) = runs(out, "maskclippp_tiny")
    with (run / "per_class_iou.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(load_class_names("coco_stuff"))
    assert {"IoU", "IoU_no_psm"} <= set(rows[0])
    row = json.loads((run / "results.json").read_text())["results"][0]
    defined = [float(r["IoU"]) for r in rows if not math.isnan(float(r["IoU"]))]
    assert defined and sum(defined) / len(defined) == pytest.approx(row["mIoU"], abs=1e-6)


# 3 ------------------------------------------------------------------------------------------------------------------


def test_reused_config_yaml_gets_a_fresh_run_and_resume_keeps_the_original(workdir: Path, caplog) -> None:
    out = workdir / "out"
    assert train_main(["--config", str(TINY_FIT), "--output_dir", str(out)]) == 0
    (first,) = runs(out, "tiny_fit")
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}

    assert train_main(["--config", str(first / "config.yaml"), "--output_dir", str(out)]) == 0
    first_after = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert first_after == before  # nothing of the new run landed in the old folder
    second = runs(out, "tiny_fit")[-1]
    assert second != first and (second / "checkpoints" / "last.ckpt").is_file()
    assert str(second) in (second / "config.yaml").read_text()

    config = (second / "config.yaml").read_text()
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert train_main(["--config", str(TINY_FIT), "--output_dir", str(out), "--ckpt_path", "last",
                       "--trainer.max_steps=4"]) == 0
    assert "Restoring states from the checkpoint" in caplog.text
    assert runs(out, "tiny_fit") == [first, second]
    assert (second / "config.yaml").read_text() == config
    (resume,) = second.glob("config-resume-*.yaml")
    assert "--trainer.max_steps=4" in resume.read_text() and "max_steps: 4" in resume.read_text()
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4

    # a resume's own config (it names the checkpoint it resumed from) starts a fresh run from step 0
    resumed_files = {p.relative_to(second): p.read_bytes() for p in second.rglob("*") if p.is_file()}
    caplog.clear()
    assert train_main(["--config", str(resume), "--output_dir", str(out)]) == 0
    assert "Restoring states from the checkpoint" not in caplog.text and "Seed set to 0" in caplog.text
    third = runs(out, "tiny_fit")[-1]
    assert third not in (first, second)
    assert {p.relative_to(second): p.read_bytes() for p in second.rglob("*") if p.is_file()} == resumed_files
    assert torch.load(third / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4

    assert train_main(["--config", str(TINY_FIT), "--output_dir", str(out), "--model.init_args.lr=oops"]) == 1
    assert runs(out, "tiny_fit") == [first, second, third]  # the failed run left no folder


# 4 ------------------------------------------------------------------------------------------------------------------


def test_unpadded_sampler_visits_every_index_once() -> None:
    from ovs.data.datamodule import UnpaddedDistributedSampler

    for size, world in [(3, 2), (5, 4), (1, 2), (8, 3)]:
        shards = [list(UnpaddedDistributedSampler(range(size), num_replicas=world, rank=r)) for r in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(size))
        assert [len(UnpaddedDistributedSampler(range(size), num_replicas=world, rank=r)) for r in range(world)] == \
            [len(shard) for shard in shards]


def test_two_process_eval_equals_single_process(workdir: Path, datasets: Path, capsys) -> None:
    args = ["--config", str(TINY_EVAL), "--datasets", "voc21", "--dataset_root", str(datasets)]
    assert eval_main([*args, "--output_dir", str(workdir / "single")]) == 0
    (single,) = runs(workdir / "single", "tiny_eval")
    expected = json.loads((single / "results.json").read_text())["results"]

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OVS_MODEL_CONFIG_PATH=str(TEST_MODEL_CONFIGS))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "eval.py"), *args, "--output_dir", str(workdir / "ddp"),
         "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("| voc21 |") == 1  # one table, printed by rank 0 only
    for noise in ("LightningCLI's args parameter", "Tip:", "LeafSpec", "Traceback"):
        assert noise not in result.stderr + result.stdout
    (ddp,) = runs(workdir / "ddp", "tiny_eval")  # one run directory
    assert json.loads((ddp / "results.json").read_text())["results"] == expected


# 5 ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--datasets", "voc99"], "voc99"),
        (["--ckpt_path"], "--ckpt_path needs a value"),
        (["--trainer.max_step=3"], "--trainer.max_step=3"),  # no abbreviation of max_steps
        (["--model.init_args.lrr=1"], "lrr"),
        (["--datasets", "voc21", "--dataset_root", "/nonexistent/root"], "/nonexistent/root"),
    ],
)
def test_cli_errors_are_one_message(args: list[str], named: str, workdir: Path, capsys) -> None:
    assert eval_main(["--config", str(TINY_EVAL), "--output_dir", str(workdir / "out"), *args]) == 1
    lines = error_lines(capsys)
    assert len(lines) <= 5 and lines[0].startswith("error: ") and named in "\n".join(lines), lines
    assert runs(workdir / "out", "tiny_eval") == []


def test_debug_shows_the_traceback_and_wrong_weights_name_the_file(workdir: Path, capsys) -> None:
    with pytest.raises(Exception, match="voc99"):
        eval_main(["--config", str(TINY_EVAL), "--datasets", "voc99", "--debug"])
    from ovs.backbones import create_clip

    weights = workdir / "convnext.pt"
    torch.save(create_clip("ovs-test-tiny-convnext").model.state_dict(), weights)
    assert eval_main(["--config", str(TINY_EVAL), f"--model.init_args.pretrained={weights}"]) == 1
    lines = error_lines(capsys)
    assert len(lines) <= 5 and str(weights) in lines[0], lines


@pytest.mark.parametrize("config", ["maskclip++_convnext_b_m2f_swin_t.yaml",
                                    "maskclip++_convnext_b_m2f_r50_native.yaml"])
def test_missing_generator_weights_name_the_generator_file(config: str, workdir: Path, capsys) -> None:
    """The generator's own message (its file and the fix) on one line, without jsonargparse's nested union-type
    wrapping and without the MaskCLIP++ CLIP's weights, which are not the problem."""
    missing = workdir / "model_final_missing.pkl"
    assert eval_main(["--config", config, "--datasets", "ade150",
                      f"--model.init_args.generator.init_args.weights={missing}"]) == 1
    lines = error_lines(capsys)
    assert len(lines) == 2 and lines[0].startswith("error: ") and f"{missing} not found" in lines[0], lines
    assert "Download the released Mask2Former" in lines[0], lines
    assert "Union" not in lines[0] and "model weights:" not in lines[0], lines


# 7 ------------------------------------------------------------------------------------------------------------------


def test_datasets_keep_the_loader_options_and_data_is_not_ambiguous(workdir: Path, datasets: Path) -> None:
    from ovs.cli_eval import _eval_datamodules

    ((_, datamodule, _),) = _eval_datamodules(["voc21"], None, str(datasets), {"num_workers": 1,
                                                                               "eval_batch_size": 3})
    loader = datamodule.test_dataloader()
    assert loader.num_workers == 1 and loader.batch_size == 3 and len(loader) == 1
    # `--data CLASS` is the DataModule option, not an abbreviation of --datasets / --dataset_root
    assert eval_main(["--config", str(TINY_EVAL), "--data", "ovs.data.PascalVOCDataModule", "--datasets", "voc20",
                      "--dataset_root", str(datasets), "--data.init_args.eval_batch_size=2",
                      "--output_dir", str(workdir / "out")]) == 0


# 8 ------------------------------------------------------------------------------------------------------------------


def test_packaged_paths_resolve_from_any_directory(workdir: Path) -> None:
    from ovs.cli import OVSCLI, resolve_config
    from ovs.runs import resolve_packaged_path

    assert resolve_packaged_path("checkpoints/ovs_toy_clip.pt") == str(REPO_ROOT / "checkpoints" / "ovs_toy_clip.pt")
    assert resolve_packaged_path("sclip_voc21") == "sclip_voc21"  # names stay names
    config = resolve_config("maskclip++_toy_synthetic.yaml")
    cli = OVSCLI(workdir / "run", ["--config", str(config), "--data.init_args.num_workers=0"], run=False)
    assert Path(cli.model.hparams.pretrained) == REPO_ROOT / "checkpoints" / "ovs_toy_clip.pt"
    assert cli.trainer.default_root_dir == str(workdir / "run")


# 10 -----------------------------------------------------------------------------------------------------------------


def test_training_an_eval_only_config_points_at_eval(workdir: Path, capsys) -> None:
    assert train_main(["--config", str(TINY_EVAL), "--output_dir", str(workdir / "out")]) == 1
    lines = error_lines(capsys)
    assert len(lines) <= 5 and "eval-only" in lines[0] and "tools/eval.py" in lines[0]
    assert runs(workdir / "out", "tiny_eval") == []


def test_help_lists_configs_and_dataset_presets(capsys) -> None:
    assert train_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--ckpt_path last|FILE" in text and "maskclip++_convnext_b" in text and "``" not in text
    assert eval_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "ade150 (maskclippp/training_free)" in text and "sclip_vit_b16" in text and "--dataset_root" in text


def test_progress_counts_steps_after_a_resume(workdir: Path) -> None:
    from lightning.pytorch import Trainer

    from ovs.runs import RunProgressBar

    def fit(max_steps: int, ckpt_path: Path | None = None) -> tuple[Trainer, RunProgressBar]:
        bar = RunProgressBar()
        trainer = Trainer(max_steps=max_steps, callbacks=[bar], logger=False, enable_checkpointing=False,
                          enable_model_summary=False, accelerator="cpu", default_root_dir=workdir)
        trainer.fit(TinyCLIPRegressor(), datamodule=TinyDataModule(), ckpt_path=ckpt_path)
        return trainer, bar

    trainer, _ = fit(3)  # 4 batches per epoch: stops inside epoch 0
    trainer.save_checkpoint(workdir / "mid.ckpt")
    trainer, bar = fit(6, workdir / "mid.ckpt")
    assert bar._get_train_description(trainer.current_epoch) == f"Epoch {trainer.current_epoch}"
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total) == (6, 6)
    bar.dataset = "voc21"
    assert bar.test_description == "Testing voc21"


# 11 -----------------------------------------------------------------------------------------------------------------


def test_synthetic_generation_shows_progress(tmp_path: Path, capsys) -> None:
    from ovs.data.synthetic.generate import generate_split

    assert generate_split(tmp_path, "val", num_images=3)
    err = capsys.readouterr().err
    assert "synthetic val" in err and "3/3" in err

"""Config resolution, every shipped YAML, a 2-step fit through tools/train.py, and bad-input messages (in-process:
``train_main`` returns the exit status)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovs.cli import REPO_ROOT, config_dir, resolve_config, train_main
from tests.conftest import TEST_MODEL_CONFIGS

TOOLS = REPO_ROOT / "tools"
TINY_CONFIG = Path(__file__).parent / "configs" / "tiny_fit.yaml"
SHIPPED = sorted(config_dir().glob("*.yaml"))


def run_tool(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               OVS_MODEL_CONFIG_PATH=str(TEST_MODEL_CONFIGS))
    return subprocess.run([sys.executable, str(TOOLS / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_bare_name_resolves_in_configs_dir(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "maskclip++_convnext_b.yaml").write_text("model: {}\n")
    monkeypatch.setenv("OVS_CONFIG_DIR", str(tmp_path))
    assert resolve_config("maskclip++_convnext_b.yaml") == tmp_path / "maskclip++_convnext_b.yaml"
    assert resolve_config("maskclip++_convnext_b") == tmp_path / "maskclip++_convnext_b.yaml"


def test_unknown_config_name_suggests_close_matches(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sclip_vit_b16.yaml").write_text("model: {}\n")
    monkeypatch.setenv("OVS_CONFIG_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Did you mean: sclip_vit_b16.yaml"):
        resolve_config("sclip_vit_b61.yaml")


@pytest.mark.parametrize("config", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_parses(config: Path) -> None:
    from ovs.cli import OVSCLI

    with pytest.raises(SystemExit) as info:
        OVSCLI(Path("unused"), ["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0


def test_two_step_fit_through_train_py(tmp_path: Path) -> None:
    result = run_tool("train.py", "--config", str(TINY_CONFIG), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "tiny_fit").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events missing"
    # resume from the newest run's last.ckpt, two more steps, same run directory (in-process: exit status returned)
    assert train_main(["--config", str(TINY_CONFIG), "--ckpt_path", "last", "--trainer.max_steps=4",
                       "--output_dir", str(tmp_path / "outputs")]) == 0
    assert list((tmp_path / "outputs" / "tiny_fit").iterdir()) == [run]


def test_unknown_config_key_fails_clearly(tmp_path: Path, capsys) -> None:
    assert train_main(["--config", str(TINY_CONFIG), "--model.init_args.lrr=0.1",
                       "--output_dir", str(tmp_path)]) == 1
    assert "lrr" in capsys.readouterr().err


def test_missing_config_fails_clearly(capsys) -> None:
    assert train_main(["--config", "does_not_exist.yaml"]) == 1
    err = capsys.readouterr().err
    assert "does_not_exist.yaml" in err and "Available configs" in err


def test_resume_without_previous_run_fails_clearly(tmp_path: Path, capsys) -> None:
    assert train_main(["--config", str(TINY_CONFIG), "--ckpt_path", "last", "--output_dir", str(tmp_path)]) == 1
    assert "no previous run" in capsys.readouterr().err

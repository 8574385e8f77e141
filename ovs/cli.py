"""Command-line entry points: ``tools/train.py`` (fit) and ``tools/eval.py`` (test on several datasets, one table).

Configs are LightningCLI YAML files (``model`` / ``data`` / ``trainer``); a bare name resolves inside ``configs/``.
Every run writes to ``outputs/<config-name>/<timestamp>/``: TensorBoard logs, ``config.yaml``, ``checkpoints/``
(``last.ckpt`` included) and, for evaluation, ``results.csv`` / ``results.json``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ovs.results import format_markdown, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """Where bare config names are looked up: ``$OVS_CONFIG_DIR`` or the repository's ``configs/``."""
    return Path(os.environ.get("OVS_CONFIG_DIR", REPO_ROOT / "configs"))


def resolve_config(name_or_path: str) -> Path:
    """Return the config file for a path or a bare name (``.yaml`` optional) inside :func:`config_dir`.

    Raises:
        FileNotFoundError: naming where it looked and the closest available names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    directory = config_dir()
    for candidate in (directory / name_or_path, directory / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    available = sorted(p.name for p in directory.glob("*.yaml"))
    close = difflib.get_close_matches(Path(name_or_path).name, available, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise FileNotFoundError(
        f"Config '{name_or_path}' is neither a file nor a name in {directory}.{hint} "
        f"Available configs: {', '.join(available) or 'none'}."
    )


def new_run_dir(config: Path, root: Path | str = "outputs") -> Path:
    """``outputs/<config-name>/<timestamp>/``, created; never reuses an existing directory."""
    base = Path(root) / config.stem
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / stamp
    suffix = 1
    while run_dir.exists():
        run_dir = base / f"{stamp}-{suffix}"
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def latest_run_with_checkpoint(config: Path, root: Path | str = "outputs") -> Path:
    """The newest run directory of ``config`` holding ``checkpoints/last.ckpt`` (for ``--ckpt_path last``)."""
    runs = sorted((Path(root) / config.stem).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(
            f"--ckpt_path last: no previous run of '{config.stem}' with checkpoints/last.ckpt under "
            f"{Path(root) / config.stem}. Start a new run without --ckpt_path, or pass the checkpoint file."
        )
    return runs[-1].parent.parent


def trainer_defaults(run_dir: Path) -> dict[str, Any]:
    """Trainer defaults every config inherits: the run directory and a TensorBoard logger writing into it."""
    return {
        "default_root_dir": str(run_dir),
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
        },
    }


class OVSCLI(LightningCLI):
    """LightningCLI with ovs defaults: subclass mode for model and data, seed 0, ovs run directories."""

    def __init__(self, run_dir: Path, args: list[str], run: bool = True) -> None:
        self.run_dir = run_dir
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults(run_dir),
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Callbacks every run gets, configurable as ``checkpoint.*``, ``progress_bar.*``, ``lr_monitor.*``."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.dirpath": str(self.run_dir / "checkpoints"), "checkpoint.save_last": True})
        parser.add_lightning_class_args(RichProgressBar, "progress_bar")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")


def _split_config_arg(argv: list[str], description: str) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=description, add_help=False)
    parser.add_argument("--config", "-c", required=False, help="config file or a name in configs/")
    parser.add_argument("--help", "-h", action="store_true")
    known, rest = parser.parse_known_args(argv)
    return known, rest


def train_main(argv: list[str] | None = None) -> None:
    """``python tools/train.py --config NAME_OR_PATH [--model.x=... --trainer.max_steps=...] [--ckpt_path last]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    known, rest = _split_config_arg(argv, "Fit an ovs model.")
    if not known.config:
        print(train_main.__doc__)
        raise SystemExit(0 if known.help else "error: --config NAME_OR_PATH is required")
    config = resolve_config(known.config)
    if known.help or any(a.startswith("--print_config") for a in rest):
        OVSCLI(Path("outputs") / config.stem, ["fit", "--config", str(config), *rest, *(["--help"] if known.help else [])])
        return
    if "--ckpt_path" in rest and rest[rest.index("--ckpt_path") + 1] == "last":
        run_dir = latest_run_with_checkpoint(config)
        rest[rest.index("--ckpt_path") + 1] = str(run_dir / "checkpoints" / "last.ckpt")
    elif "--ckpt_path=last" in rest:
        run_dir = latest_run_with_checkpoint(config)
        rest[rest.index("--ckpt_path=last")] = f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    else:
        run_dir = new_run_dir(config)
    OVSCLI(run_dir, ["fit", "--config", str(config), *rest])
    print(f"Run directory: {run_dir}  (TensorBoard: tensorboard --logdir {run_dir})")


def eval_main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``python tools/eval.py --config NAME_OR_PATH [--datasets ade150,pc59,voc20] [--ckpt_path FILE] [--x=...]``.

    Tests the configured model on each dataset (the config's own data section when ``--datasets`` is omitted) and
    prints one Markdown table; ``results.csv`` and ``results.json`` go to the run directory.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description="Evaluate an ovs model on several datasets.", add_help=False)
    parser.add_argument("--datasets", default=None, help="comma-separated names, e.g. ade150,pc59,voc20")
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to load before testing")
    parser.add_argument("--dataset_root", default=None, help="root of the datasets (default $DETECTRON2_DATASETS)")
    extra, argv = parser.parse_known_args(argv)
    known, rest = _split_config_arg(argv, "Evaluate an ovs model.")
    if known.help or not known.config:
        print(eval_main.__doc__)
        raise SystemExit(0 if known.help else "error: --config NAME_OR_PATH is required")
    config = resolve_config(known.config)
    run_dir = new_run_dir(config)
    cli = OVSCLI(run_dir, ["--config", str(config), *rest], run=False)
    model, trainer = cli.model, cli.trainer
    if extra.datasets:
        from ovs.data import build_eval_datamodule

        names = [n.strip() for n in extra.datasets.split(",") if n.strip()]
        kwargs = {"root": extra.dataset_root} if extra.dataset_root else {}
        datamodules = [(name, build_eval_datamodule(name, **kwargs)) for name in names]
    else:
        datamodules = [(getattr(cli.datamodule, "name", config.stem), cli.datamodule)]
    rows = []
    for name, datamodule in datamodules:
        metrics = trainer.test(model, datamodule=datamodule, ckpt_path=extra.ckpt_path, verbose=False)
        row = {"dataset": name}
        row.update({k.removeprefix("test/"): float(v) for k, v in (metrics[0] if metrics else {}).items()})
        rows.append(row)
    table = format_markdown(rows)
    write_results(run_dir, rows)
    print(table)
    print(f"\nResults: {run_dir / 'results.csv'}, {run_dir / 'results.json'}; TensorBoard: {run_dir}")
    return rows

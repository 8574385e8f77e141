"""Command-line entry points: ``tools/train.py`` / ``ovs-train`` (fit) and ``tools/eval.py`` / ``ovs-eval`` (test on
several datasets, one table).

Configs are LightningCLI YAML files (``model`` / ``data`` / ``trainer``); a bare name resolves inside ``configs/``.
Every new run writes to ``<output_dir>/<config-name>/<timestamp>/`` (``--output_dir``, default ``./outputs``):
TensorBoard logs, ``config.yaml``, ``checkpoints/`` (``last.ckpt`` included) and, for evaluation, ``results.csv``,
``results.json`` and ``per_class_iou.csv``, rewritten after every dataset. The run directory, checkpoint directory and
TensorBoard folder always follow the new run, whatever a re-used ``config.yaml`` says. Errors print one message (what,
which file, the fix) and exit 1; ``--debug`` or ``OVS_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ovs.runs import (
    REPO_ROOT,
    OVSError,
    RunProgressBar,
    is_global_zero,
    latest_run_with_checkpoint,
    new_run_dir,
    remove_if_unused,
    resolve_ckpt_path,
    resolve_packaged_paths,
    run_name,
    shared_run_dir,
)

__all__ = ["OVSCLI", "REPO_ROOT", "config_dir", "eval_main", "latest_run_with_checkpoint", "new_run_dir",
           "resolve_config", "train_main"]

DEFAULT_OUTPUT_DIR = "outputs"
_LOGGER_PATHS = ("TensorBoardLogger", "RunLogger", "CSVLogger")
_NOISE = (
    r".*LightningCLI's args parameter is intended to run from within Python.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*_register_pytree_node.* is deprecated.*",
    r".*when logging on epoch level in distributed setting.*",
)


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


def trainer_defaults(run_dir: Path) -> dict[str, Any]:
    """Trainer defaults every config inherits: the run directory and a TensorBoard logger writing into it."""
    return {
        "default_root_dir": str(run_dir),
        "logger": {
            "class_path": "ovs.runs.RunLogger",
            "init_args": {"save_dir": str(run_dir), "name": "", "version": ""},
        },
    }


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config into the run directory, preceded by ``header`` as YAML comments (provenance, the
    command of a resume), so the file stays a valid ``--config``."""

    def __init__(self, *args: Any, header: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header = header

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        log_dir = trainer.logger.log_dir if trainer.logger is not None else trainer.default_root_dir
        if not self.header or log_dir is None:
            return
        path = Path(log_dir) / self.config_filename
        comments = "".join(f"# {line}\n" for line in self.header.splitlines())
        path.write_text(comments + path.read_text())


class OVSCLI(LightningCLI):
    """LightningCLI with ovs defaults: subclass mode for model and data, seed 0, ovs run directories.

    Args:
        run_dir: the run directory; ``trainer.default_root_dir``, ``checkpoint.dirpath`` and the TensorBoard folder
            are set to it after parsing, overriding what the config says (a re-used ``config.yaml`` of another run).
        args: command-line arguments (subcommand first when ``run``).
        run: run the subcommand (``fit``); ``False`` only builds model, data and trainer.
        ckpt_path: ``fit``'s checkpoint to resume from, replacing any ``ckpt_path`` in the config file.
        config_filename: name of the saved config (``config.yaml``; resumes write beside it).
        config_header: comment lines written at the top of the saved config.
        require_training: refuse modules without a ``training_step`` (eval-only methods) with a clear message.
        data_optional: a config without a ``data`` section is valid (``tools/eval.py --datasets``).
    """

    def __init__(self, run_dir: Path, args: list[str], run: bool = True, ckpt_path: Path | None = None,
                 config_filename: str = "config.yaml", config_header: str = "",
                 require_training: bool = False, data_optional: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.data_optional = data_optional
        self.ckpt_path = ckpt_path
        self.require_training = require_training
        strict = {"exit_on_error": False, "allow_abbrev": False}
        super().__init__(
            LightningModule,
            None if data_optional else LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveRunConfig,
            trainer_defaults=trainer_defaults(self.run_dir),
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True, "config_filename": config_filename, "header": config_header},
            parser_kwargs={**strict, "fit": strict, "validate": strict, "test": strict, "predict": strict},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Callbacks every run gets, configurable as ``checkpoint.*``, ``progress_bar.*``, ``lr_monitor.*``."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.dirpath": str(self.run_dir / "checkpoints"), "checkpoint.save_last": True})
        parser.add_lightning_class_args(RunProgressBar, "progress_bar")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")

    def _active_config(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        """Point every output path at :attr:`run_dir`, resolve packaged paths independently of the working
        directory, set ``fit``'s ``ckpt_path`` and refuse eval-only methods in ``fit``."""
        config = self._active_config()
        config["trainer.default_root_dir"] = str(self.run_dir)
        config["checkpoint.dirpath"] = str(self.run_dir / "checkpoints")
        loggers = config["trainer.logger"]
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith(_LOGGER_PATHS):
                if str(logger["class_path"]).endswith("TensorBoardLogger"):
                    logger["class_path"] = "ovs.runs.RunLogger"
                logger["init_args.save_dir"] = str(self.run_dir)
                logger["init_args.name"] = ""
                logger["init_args.version"] = ""
        for section in ("model", "data"):
            if isinstance(config.get(section), Namespace) and isinstance(config[section].get("init_args"), Namespace):
                resolve_packaged_paths(config[section]["init_args"])
        if self.subcommand == "fit":
            config["ckpt_path"] = None if self.ckpt_path is None else str(self.ckpt_path)
        if self.require_training:
            check_trainable(config["model.class_path"])

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a failure names the config and the weights file involved."""
        try:
            super().instantiate_classes()
        except OVSError:
            raise
        except Exception as err:
            root = root_cause(err)
            if isinstance(root, (OVSError, FileNotFoundError)):  # names its file and the fix (e.g. a generator's)
                message = " ".join(line.strip() for line in str(root).splitlines() if line.strip())
                raise OVSError(f"Building the model / data / trainer of the config failed: {message}") from err
            weights = self._active_config().get("model.init_args.pretrained")
            hint = f" (model weights: {weights})" if isinstance(weights, str) else ""
            message = short_message(err)
            raise OVSError(f"Building the model / data / trainer of the config failed{hint}: {message}") from err


def check_trainable(class_path: str) -> None:
    """Raise :class:`OVSError` when the module class has no ``training_step`` (an eval-only method)."""
    module_name, _, class_name = class_path.rpartition(".")
    module_class = getattr(importlib.import_module(module_name), class_name)
    if getattr(module_class, "training_step", None) is LightningModule.training_step:
        raise OVSError(
            f"{module_class.__name__} is an eval-only (training-free) method: it has nothing to train. "
            "Evaluate it with `python tools/eval.py --config <same config> --datasets ...`."
        )


# ----------------------------------------------------------------------------------------------------------------
# Error reporting


_PARSER_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes: [", "Errors:",
                 "- Expected a <class 'NoneType'>", "Given value type:", "Given value:")


def root_cause(err: BaseException) -> BaseException:
    """The innermost exception of ``err``'s ``raise ... from`` chain (jsonargparse wraps a class's own error in one
    union-type error per nesting level)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def short_message(err: BaseException, max_lines: int = 3) -> str:
    """The message of ``err`` in at most ``max_lines`` lines (+ one saying how many were cut); jsonargparse's
    union-type boilerplate is dropped so the line naming the bad key or class remains."""
    lines = [line.rstrip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    kept = [line for line in lines if not line.strip().removeprefix("- ").startswith(_PARSER_NOISE)]
    if len(kept) < len(lines):
        lines = [" ".join(line.strip().removeprefix("- ") for line in kept)] or lines[:1]
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines: --debug shows everything)"]
    return "\n".join(lines)


def format_error(err: BaseException) -> str:
    """The one message a CLI failure prints: ``error: <what, which file, the fix>`` (≤ 4 lines) and how to get the
    traceback."""
    known = isinstance(err, (OVSError, FileNotFoundError, ValueError, KeyError, argparse.ArgumentError))
    text = short_message(err)
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    prefix = "error: " if known else f"error: {type(err).__name__}: "
    return f"{prefix}{text}\n(full traceback: add --debug or set OVS_DEBUG=1)"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence warnings and info lines that are noise for a user of the tools."""
    tips = _DropTips()
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero_logger.addFilter(tips)
    with warnings.catch_warnings():
        for pattern in _NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            rank_zero_logger.removeFilter(tips)


def _guard(run: Callable[[list[str]], Any], argv: list[str] | None) -> int:
    """Run a tool; any failure prints :func:`format_error` and returns 1 (130 on Ctrl-C), or re-raises in debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("OVS_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    with _quiet():
        try:
            run(args)
        except KeyboardInterrupt:
            if debug:
                raise
            print("Interrupted.", file=sys.stderr)
            return 130
        except Exception as err:
            if debug:
                raise
            print(format_error(err), file=sys.stderr)
            return 1
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Shared argument handling


def pre_parser(eval_tool: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config", "-c")
    parser.add_argument("--help", "-h", action="store_true")
    parser.add_argument("--ckpt_path", nargs="?", const="")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR)
    if eval_tool:
        parser.add_argument("--datasets")
        parser.add_argument("--dataset_root")
        parser.add_argument("--protocol")
    return parser


def ckpt_argument(value: str | None) -> str | None:
    if value == "":
        raise OVSError("--ckpt_path needs a value: a checkpoint file, or `last` for the newest run's last.ckpt.")
    return value


def configs_listing() -> str:
    names = sorted(p.stem for p in config_dir().glob("*.yaml"))
    return f"configs (in {config_dir()}): " + ", ".join(names)


TRAIN_USAGE = """\
usage: python tools/train.py --config NAME_OR_PATH [--KEY=VALUE ...] [--ckpt_path last|FILE] [--output_dir DIR]

Fit an ovs model described by a LightningCLI YAML config (a file, or a name in configs/).

  --config NAME_OR_PATH  the config; `--config NAME --help` lists every key, `--print_config` prints them all
  --KEY=VALUE            override any key, e.g. --trainer.max_steps=1000 --model.init_args.lr=1e-4
  --ckpt_path last|FILE  resume exactly (`last`: the newest run's checkpoints/last.ckpt) in that run's directory
  --output_dir DIR       where run directories go (default ./outputs): DIR/<config-name>/<timestamp>/
  --debug                full tracebacks on errors (or OVS_DEBUG=1)
"""

# ----------------------------------------------------------------------------------------------------------------
# train


def train_main(argv: list[str] | None = None) -> int:
    """``python tools/train.py --config NAME_OR_PATH [--KEY=VALUE ...] [--ckpt_path last|FILE]``; returns the exit
    status (0 on success)."""
    return _guard(_train, argv)


def _resume_dir(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` beside ``<run>/config.yaml``)."""
    run = ckpt.resolve().parent.parent
    return run if ckpt.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def _train(argv: list[str]) -> None:
    known, rest = pre_parser(eval_tool=False).parse_known_args(argv)
    if not known.config:
        if known.help:
            print(TRAIN_USAGE + "\n" + configs_listing())
            return
        raise OVSError("--config NAME_OR_PATH is required (python tools/train.py --help lists the configs).")
    config = resolve_config(known.config)
    output_dir = Path(known.output_dir)
    if known.help or any(a.startswith("--print_config") for a in rest):
        help_flag = ["--help"] if known.help else []
        OVSCLI(output_dir / run_name(config), ["fit", "--config", str(config), *rest, *help_flag])
        return
    ckpt = resolve_ckpt_path(ckpt_argument(known.ckpt_path), config, output_dir)
    resume_dir = _resume_dir(ckpt) if ckpt is not None else None
    run_dir = resume_dir if resume_dir is not None else new_run_dir(config, output_dir)
    filename, header = "config.yaml", ""
    if resume_dir is not None:
        filename = f"config-resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        header = f"resumed from {ckpt}\ncommand: {' '.join(argv)}"
    with shared_run_dir(run_dir):
        try:
            OVSCLI(run_dir, ["fit", "--config", str(config), *rest], ckpt_path=ckpt, config_filename=filename,
                   config_header=header, require_training=True)
        except BaseException:
            if resume_dir is None and is_global_zero():
                remove_if_unused(run_dir)
            raise
    if is_global_zero():
        print(f"Run directory: {run_dir}  (TensorBoard: tensorboard --logdir {run_dir})")


# ----------------------------------------------------------------------------------------------------------------
# eval (ovs.cli_eval)


def eval_main(argv: list[str] | None = None) -> int:
    """``python tools/eval.py --config NAME_OR_PATH [--datasets ade150,pc59,voc20] [--ckpt_path last|FILE]``;
    returns the exit status (0 on success)."""
    from ovs.cli_eval import run_eval

    return _guard(run_eval, argv)

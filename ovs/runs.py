"""Run directories, checkpoints, packaged paths and provenance of ``tools/train.py`` / ``tools/eval.py``.

Every new run gets its own ``<output_dir>/<config-name>/<timestamp>/``; only the global-zero process creates it and
the other DDP processes (re-launched copies of the same command) find it in ``$OVS_RUN_DIR``. ``--ckpt_path last``
means the newest run of the config holding ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_DIR_ENV = "OVS_RUN_DIR"
"""Environment variable through which the global-zero process hands its run directory to the other ranks."""
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
_PATH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".txt", ".json", ".yaml", ".npz")


class OVSError(Exception):
    """A user-facing error: the command-line tools print its message (what, which file, the fix) on its own."""


def is_global_zero() -> bool:
    """Whether this process is rank 0 of its (possibly not yet started) distributed job, read from the launcher's
    environment (Lightning's DDP launcher, torchrun, SLURM)."""
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


def run_name(config: Path) -> str:
    """Folder name of a config's runs: its stem, or for a run's own ``config.yaml`` / ``config-resume-*.yaml``
    (``<output_dir>/<name>/<timestamp>/config.yaml``) the ``<name>`` of that run."""
    if config.name == "config.yaml" or config.name.startswith("config-resume-"):
        return config.resolve().parent.parent.name
    return config.stem


def new_run_dir(config: Path, root: Path | str = "outputs") -> Path:
    """``<root>/<config-name>/<timestamp>/``, created; never reuses an existing directory.

    A process other than the global zero returns the directory the global zero put in ``$OVS_RUN_DIR`` (or, without
    one, the path it would use) and creates nothing.
    """
    if not is_global_zero():
        shared = os.environ.get(RUN_DIR_ENV)
        return Path(shared) if shared else Path(root) / run_name(config) / "rank-other"
    base = Path(root) / run_name(config)
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
    name = run_name(config)
    runs = sorted((Path(root) / name).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise OVSError(
            f"--ckpt_path last: no previous run of '{name}' with checkpoints/last.ckpt under "
            f"{Path(root) / name}. Train first (tools/train.py --config {config.name}), pass the checkpoint "
            "file, or point --output_dir at the outputs folder of that run."
        )
    return runs[-1].parent.parent


@contextmanager
def shared_run_dir(run_dir: Path) -> Iterator[None]:
    """Publish ``run_dir`` in ``$OVS_RUN_DIR`` for the DDP processes launched inside the block; restored after."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


def remove_if_unused(run_dir: Path) -> bool:
    """Delete a failed run's directory when it holds no checkpoint and no results (config and logs of a run that
    never got going are not worth a folder). Returns whether it was removed."""
    if not run_dir.is_dir():
        return False
    kept = [p for p in run_dir.rglob("*") if p.is_file() and (p.suffix == ".ckpt" or p.name.startswith("results"))]
    if kept:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
    return True


# ----------------------------------------------------------------------------------------------------------------
# Paths inside configs


def resolve_packaged_path(value: str) -> str:
    """A relative file path that does not exist from the working directory but does inside the ovs checkout
    (``checkpoints/ovs_toy_clip.pt``, ``ovs/data/synthetic/ovs_synthetic_seen.txt``) becomes absolute; any other
    value is returned unchanged."""
    if not value or "\n" in value or len(value) > 4096:
        return value
    path = Path(value).expanduser()
    if path.is_absolute() or (path.parent == Path(".") and path.suffix not in _PATH_SUFFIXES) or path.exists():
        return value
    packaged = REPO_ROOT / path
    return str(packaged) if packaged.exists() else value


def resolve_packaged_paths(value: Any) -> Any:
    """:func:`resolve_packaged_path` applied to every string in nested dicts / lists / jsonargparse namespaces."""
    if isinstance(value, str):
        return resolve_packaged_path(value)
    if isinstance(value, list):
        return [resolve_packaged_paths(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve_packaged_paths(v) for k, v in value.items()}
    if isinstance(value, Namespace):
        for key, item in vars(value).items():
            setattr(value, key, resolve_packaged_paths(item))
    return value


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def resolve_ckpt_path(value: str | None, config: Path, output_dir: Path) -> Path | None:
    """``None``, ``last`` (the newest run's ``last.ckpt``) or an existing file; anything else is an error."""
    if value is None or value in ("", "null", "None"):
        return None
    if value == "last":
        return latest_run_with_checkpoint(config, output_dir) / "checkpoints" / "last.ckpt"
    path = Path(value).expanduser()
    if not path.is_file():
        raise OVSError(
            f"Checkpoint {path} does not exist. Pass an existing .ckpt file, or `--ckpt_path last` for the newest "
            f"run of '{run_name(config)}' under {output_dir / run_name(config)}."
        )
    return path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint loaded safely (``weights_only``: tensors, containers and Lightning's hyper-parameter
    dict only); unreadable or truncated files and files without a ``state_dict`` raise :class:`OVSError`."""
    try:
        with torch.serialization.safe_globals([AttributeDict]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reason a file cannot be read gets the same message
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OVSError(
            f"Checkpoint {path} cannot be read ({first}). It may be truncated by an interrupted copy or save: copy "
            "it again or pick another checkpoint (e.g. `--ckpt_path last`)."
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise OVSError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by train.py.")
    return checkpoint


def load_checkpoint_into(model: LightningModule, path: Path, config: Path) -> None:
    """Load the weights of checkpoint ``path`` into ``model`` (built from ``config``), strictly; a checkpoint that
    does not fit the configured model raises :class:`OVSError` naming both files."""
    checkpoint = read_checkpoint(path)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (RuntimeError, ValueError, KeyError) as err:
        lines = str(err).strip().splitlines()
        summary = " ".join(line.strip() for line in lines[:3])
        raise OVSError(
            f"Checkpoint {path} does not fit the model of config {config.name}: {summary[:400]} "
            "Evaluate it with the config it was trained with (its run folder holds config.yaml)."
        ) from err
    model.on_load_checkpoint(checkpoint)


# ----------------------------------------------------------------------------------------------------------------
# Provenance


def git_commit() -> str | None:
    """``HEAD`` of the ovs checkout (``+dirty`` with uncommitted changes to tracked files), ``None`` outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def machine_description() -> str:
    """One line describing the CPU a run used: its model name (``/proc/cpuinfo``, else ``platform``), the visible
    logical cores and torch's version and thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} logical cores visible, torch {torch.__version__} with {threads} threads"


def ovs_version() -> str:
    """The installed ovs version."""
    from ovs import __version__

    return __version__


# ----------------------------------------------------------------------------------------------------------------
# Logger and progress bar that know the dataset under evaluation


class RunLogger(TensorBoardLogger):
    """TensorBoard logger of an ovs run: while ``dataset`` is set, ``test/<metric>`` scalars are written as
    ``test/<dataset>/<metric>`` so several datasets of one evaluation stay apart (methods keep logging
    ``test/<metric>``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dataset: str | None = None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.dataset:
            prefix = f"test/{self.dataset}/"
            metrics = {
                (f"{prefix}{key.removeprefix('test/')}" if key.startswith("test/") and not key.startswith(prefix)
                 else key): value
                for key, value in metrics.items()
            }
        super().log_metrics(metrics, step)


class RunProgressBar(RichProgressBar):
    """Rich progress bar that names the dataset under test and counts optimizer steps when training is bounded by
    ``max_steps`` (``Epoch 3  120/300``, also right after a resume) instead of ``Epoch 0/-2``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dataset: str | None = None

    @property
    def test_description(self) -> str:
        return f"Testing {self.dataset}" if self.dataset else "Testing"

    def _step_based(self) -> bool:
        return self._trainer is not None and self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._step_based() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self._step_based() or self.trainer.max_epochs in (None, -1):
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._step_based():
            self._update(self.train_progress_bar_id, trainer.global_step)
            self.refresh()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._step_based() and not self.is_disabled:
            self._update(self.train_progress_bar_id, trainer.global_step)
            self.refresh()

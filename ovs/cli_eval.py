"""``tools/eval.py`` / ``ovs-eval``: test one model on one or more datasets, one table, results after every dataset.

Every preset folder is checked before the first image; ``results.csv`` / ``results.json`` (with provenance) and
``per_class_iou.csv`` are rewritten atomically after each dataset by the global-zero process only, and the table is
printed even when writing fails. The module's ``test/<metric>`` values become the columns (any metric a method logs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from ovs.cli import OVSCLI, ckpt_argument, configs_listing, pre_parser, resolve_config, short_message
from ovs.data.registry import EVAL_PRESETS, build_eval_datamodule, loader_options, resolve_protocol
from ovs.results import format_markdown, per_class_rows, write_per_class, write_results
from ovs.runs import (
    OVSError,
    RunLogger,
    RunProgressBar,
    file_sha256,
    git_commit,
    is_global_zero,
    load_checkpoint_into,
    new_run_dir,
    ovs_version,
    remove_if_unused,
    resolve_ckpt_path,
    run_name,
    shared_run_dir,
)

EVAL_USAGE = """\
usage: python tools/eval.py --config NAME_OR_PATH [--datasets a,b,c] [--ckpt_path last|FILE] [--dataset_root DIR]
                            [--protocol maskclippp|training_free] [--output_dir DIR] [--KEY=VALUE ...]

Test a model on one or more datasets and print one table; results.csv / results.json / per_class_iou.csv go to
the run directory after every dataset.

  --config NAME_OR_PATH  the config (without --datasets its own data section is evaluated)
  --datasets a,b,c       evaluation presets (list below); --data.init_args.num_workers / eval_batch_size apply
  --ckpt_path last|FILE  weights to test (`last`: the newest training run's checkpoints/last.ckpt)
  --dataset_root DIR     datasets root (default $DETECTRON2_DATASETS, else ./datasets)
  --protocol NAME        class names + mIoU convention of the presets (default: maskclippp where available)
  --output_dir DIR       where run directories go (default ./outputs)
  --debug                full tracebacks on errors (or OVS_DEBUG=1)
"""


def _presets_listing() -> str:
    return "dataset presets: " + ", ".join(f"{name} ({'/'.join(p.protocols)})" for name, p in EVAL_PRESETS.items())


def _eval_datamodules(names: list[str], protocol: str | None, root: str | None, data_args: dict[str, Any],
                      task: str = "semantic") -> list[tuple[str, LightningDataModule, dict[str, Any]]]:
    """Build and validate every preset before the first image: ``(name, DataModule, protocol description)``.

    ``task`` is the model's ``eval_task`` (``"panoptic"``: PQ / AP where the preset has panoptic annotations)."""
    built = []
    for name in names:
        try:
            chosen, spec = resolve_protocol(name, protocol)
            datamodule = build_eval_datamodule(name, chosen, prefer_task=task, **({"root": root} if root else {}),
                                               **loader_options(data_args))
            datamodule.validate()
        except (KeyError, ValueError, FileNotFoundError, OSError) as err:
            raise OVSError(f"Dataset {name}: {short_message(err).strip(chr(34) + chr(39))}") from err
        built.append((name, datamodule, {"protocol": chosen, "class_names": spec.class_names,
                                         "miou_convention": spec.miou_convention,
                                         "task": getattr(datamodule, "task", "semantic")}))
    return built


def _set_dataset(trainer: Trainer, name: str) -> None:
    for item in [*trainer.loggers, *trainer.callbacks]:
        if isinstance(item, (RunLogger, RunProgressBar)):
            item.dataset = name


def _metric_row(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Table row of one dataset: every logged ``test/<metric>`` or ``test/<dataset>/<metric>`` value."""
    row: dict[str, Any] = {"dataset": name}
    for key, value in metrics.items():
        row[key.removeprefix(f"test/{name}/").removeprefix("test/")] = float(value)
    return row


def _inference_protocol(model: LightningModule) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                for k, v in dataclasses.asdict(config).items()}
    return None


def _yaml_header(provenance: dict[str, Any]) -> str:
    lines = ["ovs evaluation run"]
    lines += [f"{key}: {value}" for key, value in provenance.items() if key != "command"]
    lines.append(f"command: {' '.join(provenance['command'])}")
    return "\n".join(lines)


def run_eval(argv: list[str]) -> list[dict[str, Any]]:
    """The evaluation behind :func:`eval_main`; returns the table rows (raises on failure)."""
    known, rest = pre_parser(eval_tool=True).parse_known_args(argv)
    if not known.config:
        if known.help:
            print(EVAL_USAGE + "\n" + _presets_listing() + "\n\n" + configs_listing())
            return []
        raise OVSError("--config NAME_OR_PATH is required (python tools/eval.py --help lists configs and datasets).")
    config = resolve_config(known.config)
    output_dir = Path(known.output_dir)
    if known.help or any(a.startswith("--print_config") for a in rest):
        help_flag = ["--help"] if known.help else []
        OVSCLI(output_dir / run_name(config), ["--config", str(config), *rest, *help_flag], run=False)
        return []
    ckpt = resolve_ckpt_path(ckpt_argument(known.ckpt_path), config, output_dir)
    names = [n.strip() for n in (known.datasets or "").split(",") if n.strip()]
    rank_zero = is_global_zero()
    root = known.dataset_root or os.environ.get("DETECTRON2_DATASETS", "datasets")
    provenance: dict[str, Any] = {
        "config": str(config.resolve()),
        "checkpoint": None if ckpt is None else str(ckpt.resolve()),
        "checkpoint_sha256": None if ckpt is None or not rank_zero else file_sha256(ckpt),
        "datasets": names,
        "dataset_root": str(Path(root).resolve()) if names else None,
        "ovs_version": ovs_version(),
        "git_commit": git_commit() if rank_zero else None,
        "command": list(argv),
    }
    if names:
        try:
            provenance["protocols"] = {name: resolve_protocol(name, known.protocol)[0] for name in names}
        except (KeyError, ValueError) as err:
            raise OVSError(short_message(err).strip("\"'")) from err
    run_dir = new_run_dir(config, output_dir)
    rows: list[dict[str, Any]] = []
    try:
        with shared_run_dir(run_dir):
            rows = _evaluate(config, run_dir, rest, ckpt, names, known, provenance, rank_zero)
    except BaseException:
        if rank_zero and not rows:
            remove_if_unused(run_dir)
        raise
    return rows


def _evaluate(config: Path, run_dir: Path, rest: list[str], ckpt: Path | None, names: list[str],
              known: argparse.Namespace, provenance: dict[str, Any], rank_zero: bool) -> list[dict[str, Any]]:
    cli = OVSCLI(run_dir, ["--config", str(config), *rest], run=False, config_header=_yaml_header(provenance),
                 data_optional=bool(names))
    model, trainer = cli.model, cli.trainer
    if ckpt is not None:
        load_checkpoint_into(model, ckpt, config)
    if names:
        data_args = cli.config.get("data.init_args")
        data_args = data_args.as_dict() if isinstance(data_args, Namespace) else dict(data_args or {})
        datamodules = _eval_datamodules(names, known.protocol, known.dataset_root, data_args,
                                        getattr(model, "eval_task", "semantic"))
    else:
        name = str(getattr(cli.datamodule, "name", None) or run_name(config))
        datamodules = [(name, cli.datamodule, {"protocol": "config", "data": cli.config.get("data.class_path")})]
        provenance["datasets"] = [name]
    provenance["protocols"] = {}
    rows: list[dict[str, Any]] = []
    per_class: list[dict[str, Any]] = []
    write_error: OSError | None = None
    try:
        for name, datamodule, protocol in datamodules:
            _set_dataset(trainer, name)
            model.test_per_class = None
            metrics = trainer.test(model, datamodule=datamodule, verbose=False)
            rows.append(_metric_row(name, metrics[0] if metrics else {}))
            provenance["protocols"][name] = {**protocol, "inference": _inference_protocol(model)}
            if isinstance(model.test_per_class, dict):
                per_class += per_class_rows(name, model.test_per_class)
            if rank_zero:
                try:
                    write_results(run_dir, rows, provenance)
                    if per_class:
                        write_per_class(run_dir, per_class)
                except OSError as err:
                    write_error = err
    except BaseException:
        if rank_zero and rows:
            print(format_markdown(rows) + f"\n\n(stopped after {len(rows)} of {len(datamodules)} datasets; "
                  f"finished results in {run_dir})")
        raise
    if rank_zero:
        print(format_markdown(rows))
        if write_error is not None:
            raise OVSError(f"Could not write the results into {run_dir} ({write_error}); the table above has them. "
                           "Free disk space or pass another --output_dir.")
        extra = f", {run_dir / 'per_class_iou.csv'}" if per_class else ""
        print(f"\nResults: {run_dir / 'results.csv'}, {run_dir / 'results.json'}{extra}; TensorBoard: {run_dir}")
    return rows

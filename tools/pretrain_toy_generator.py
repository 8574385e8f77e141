"""Train the toy mask generator of the embedded demo and write its model card (issue 13 item 5; docs/synthetic.md
"The toy mask generator").

Runs the LightningCLI config ``configs/mask2former_toy_synthetic.yaml`` (a small Mask2Former on the tiny ResNet,
closed vocabulary = the 35 seen classes, trained from scratch on the synthetic ``train`` split), exports the trained
weights as ``checkpoints/ovs_toy_generator.pt`` (a plain state dict, ``torch.load(weights_only=True)``) and measures
the generator alone on the synthetic ``val`` split: class-agnostic recall of the ground-truth segments (IoU >= 0.5 /
0.75 with the best proposal, ABO) and PQ with its own closed-vocabulary classifier; written to
``checkpoints/ovs_toy_generator.{json,md}``, with the numbers on the first :data:`CHECK_IMAGES` val images that
``tests/generators/test_toy_generator.py`` reproduces.

    python tools/pretrain_toy_generator.py [--time-budget 25] [--threads 1] [--out checkpoints/ovs_toy_generator]
        [--eval-only] [overrides ...]

Extra arguments are LightningCLI overrides of the config (``--trainer.max_steps=200``). The poly schedule follows
whichever of ``trainer.max_steps`` and ``--time-budget`` (minutes of ``trainer.fit``) is further along and training
stops when either is spent, so the run fits its budget on shared cores; the card records the steps done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from ovs.cli import OVSCLI, REPO_ROOT, new_run_dir, resolve_config
from ovs.data.class_names import load_class_names
from ovs.evaluation import PanopticQuality
from ovs.evaluation.proposals import ProposalRecall, best_proposals
from ovs.generators.native import NativeMask2Former
from ovs.generators.native.module import poly_multiplier
from ovs.methods.maskclippp.fusion import train_to_test_lut
from ovs.methods.maskclippp.postprocess import panoptic_inference
from ovs.runs import machine_description

CONFIG = "mask2former_toy_synthetic.yaml"
OUT = REPO_ROOT / "checkpoints" / "ovs_toy_generator"
CHECK_IMAGES = 100
"""The first val images of the reproduction check (tests/generators/test_toy_generator.py)."""
GROUPS = ("things_seen", "things_unseen", "stuff")
OBJECT_MASK_THRESHOLD = OVERLAP_THRESHOLD = 0.8
"""Mask2Former's panoptic post-processing thresholds (its COCO-Panoptic configs; the demo's MaskCLIP++ configs)."""
MAX_MEGABYTES = 15.0
SEEN_NAMES = "ovs/data/synthetic/ovs_synthetic_seen.txt"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG, help="LightningCLI config (name in configs/ or a path)")
    parser.add_argument("--out", type=Path, default=OUT, help="output stem: <out>.pt, <out>.json, <out>.md")
    parser.add_argument("--output", default="outputs", help="root of the run directories (TensorBoard, last.ckpt)")
    parser.add_argument("--time-budget", type=float, default=25.0, help="minutes of training at most (0: no limit)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 runs faster on cores shared with other jobs")
    parser.add_argument("--eval-only", action="store_true", help="re-measure <out>.pt and rewrite the card's numbers")
    return parser.parse_known_args(argv)


class TimeBudgetPoly(Callback):
    """Mask2Former's poly schedule ``(1 - progress)^power`` (:func:`poly_multiplier`) on the progress
    ``max(step / max_steps, elapsed / budget)``, set on every parameter group (``initial_lr`` × multiplier) before
    each step; training stops when the progress reaches 1."""

    def __init__(self, minutes: float, power: float = 0.9) -> None:
        self.seconds, self.power = minutes * 60, power
        self.start = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start = time.perf_counter()

    def progress(self, trainer: Trainer) -> float:
        by_steps = trainer.global_step / max(trainer.max_steps, 1)
        by_time = (time.perf_counter() - self.start) / self.seconds if self.seconds > 0 else 0.0
        return min(max(by_steps, by_time), 1.0)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        progress = self.progress(trainer)
        if progress >= 1.0:
            trainer.should_stop = True
        multiplier = poly_multiplier(int(progress * 1_000_000), 1_000_000, self.power)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * multiplier


def generator_init_args(module: Any) -> dict[str, Any]:
    """:class:`NativeMask2Former` arguments of the trained module (the demo config's ``generator`` section), test
    resize = the benchmark's 112 px (no resize)."""
    sizes = dict(module.model_sizes)
    return {"num_classes": len(module.vocabulary), "training_vocabulary": SEEN_NAMES, **sizes,
            "min_size_test": 112, "max_size_test": 112}


def segment_groups(segments_info: list[dict[str, Any]], seen: torch.Tensor, is_thing: torch.Tensor) -> torch.Tensor:
    """Group index of every GT segment: 0 thing of a seen class, 1 thing of an unseen class, 2 stuff."""
    labels = torch.tensor([s["category_id"] for s in segments_info], dtype=torch.int64)
    thing = is_thing[labels]
    return torch.where(thing, torch.where(seen[labels], 0, 1), 2)


def closed_vocabulary_scores(logits: torch.Tensor, lut: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Generator logits ``[Q, K_gen + 1]`` -> log-probabilities over the test classes + void ``[Q, K + 1]``: each
    generator class in its test column (:func:`train_to_test_lut`), void last, ``-inf`` for test classes outside the
    generator's vocabulary (the generator alone cannot predict them)."""
    if len(set(lut[:-1].tolist())) != lut.numel() - 1 or int(lut[:-1].max()) >= num_classes:
        raise ValueError("Every generator class must name a distinct test class (first synonyms of the vocabularies).")
    scores = logits.new_full((logits.shape[0], num_classes + 1), float("-inf"))
    return scores.index_copy(1, lut.to(logits.device), logits.float().log_softmax(dim=-1))


@torch.inference_mode()
def evaluate_generator(generator: NativeMask2Former, dataset: Any, count: int, is_thing: torch.Tensor,
                       seen: torch.Tensor) -> dict[str, float]:
    """Class-agnostic recall / ABO (:class:`ProposalRecall`, groups :data:`GROUPS`), the accuracy of the generator's
    own classifier on the best proposal of each segment (argmax without void, ``class_acc_<group>``; unseen things
    cannot be right) and PQ (all classes and the seen ones) of the generator alone on the first ``count`` images of
    ``dataset`` (a panoptic synthetic split).

    Args:
        is_thing, seen: ``bool [K]`` thing flags and seen classes of the dataset's classes.
    """
    names = [list(n) for n in dataset.class_names]
    lut = train_to_test_lut(generator.training_vocabulary, names)
    recall = ProposalRecall(GROUPS)
    quality = PanopticQuality(len(names), is_thing)
    proposals_kept = 0
    correct = torch.zeros(len(GROUPS))
    total = torch.zeros(len(GROUPS))
    start = time.perf_counter()
    for index in range(count):
        sample = dataset[index]
        proposal = generator({"image": [sample["image"]], "meta": [sample["meta"]]})[0]
        info = sample["segments_info"]
        segments = sample["pan_seg"][None] == torch.tensor([s["id"] for s in info])[:, None, None]  # [G, H, W]
        groups = segment_groups(info, seen, is_thing)
        recall.update(proposal.masks, segments, groups)
        _, best = best_proposals(proposal.masks >= 0.5, segments)  # [G]
        predicted = lut[proposal.logits[best, :-1].argmax(dim=1)]  # [G] test classes, void excluded
        labels = torch.tensor([s["category_id"] for s in info])
        correct += torch.bincount(groups, weights=(predicted == labels).double(), minlength=len(GROUPS)).float()
        total += torch.bincount(groups, minlength=len(GROUPS)).float()
        scores = closed_vocabulary_scores(proposal.logits, lut, len(names))
        result = panoptic_inference(scores, proposal.masks, is_thing, OBJECT_MASK_THRESHOLD, OVERLAP_THRESHOLD)
        proposals_kept += len(result.segments_info)
        quality.update(result.pan_seg, result.segments_info, sample["pan_seg"], info)
    seconds = time.perf_counter() - start
    metrics = {key: float(value) for key, value in recall.compute().items()}
    pq = quality.compute()
    metrics.update({key: float(pq[key]) for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")})
    present = (quality.tp + quality.fp + quality.fn) > 0
    chosen = present & seen
    metrics["PQ_seen"] = float(pq["PQ_per_class"][chosen].mean()) if chosen.any() else float("nan")
    for index, name in enumerate(GROUPS):
        metrics[f"class_acc_{name}"] = float(100 * correct[index] / total[index]) if total[index] else float("nan")
    metrics["segments_per_image"] = proposals_kept / max(count, 1)
    metrics["images"] = count
    metrics["seconds_per_image"] = seconds / max(count, 1)
    return metrics


def export_weights(module: Any, path: Path) -> float:
    """Write the trained Mask2Former's state dict (fp32 tensors only) to ``path``; returns its size in MB."""
    state = {key: value.detach().cpu().contiguous() for key, value in module.model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    megabytes = path.stat().st_size / 1e6
    if megabytes > MAX_MEGABYTES:
        raise SystemExit(f"{path} is {megabytes:.1f} MB, over the {MAX_MEGABYTES} MB budget: shrink the model in "
                         f"configs/{CONFIG}.")
    return megabytes


def write_card(out: Path, record: dict[str, Any]) -> None:
    """``<out>.json`` (the record) and ``<out>.md`` (the model card)."""
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    full, check, train = record["val"], record["check"], record["training"]
    rows = [
        ("class-agnostic recall, IoU ≥ 0.5 (all GT segments)", "recall@0.5"),
        ("... things of seen classes", "recall@0.5_things_seen"),
        ("... things of unseen classes (never in train)", "recall@0.5_things_unseen"),
        ("... stuff", "recall@0.5_stuff"),
        ("class-agnostic recall, IoU ≥ 0.75", "recall@0.75"),
        ("average best overlap (ABO, mean best IoU)", "abo"),
        ("own classifier on the best proposal: accuracy, seen things", "class_acc_things_seen"),
        ("... stuff", "class_acc_stuff"),
        ("PQ, closed vocabulary, all 44 classes", "PQ"),
        ("PQ on the 35 seen classes", "PQ_seen"),
        ("PQ things / stuff", None),
        ("SQ / RQ", None),
        ("panoptic segments kept per image", "segments_per_image"),
    ]
    table = []
    for label, key in rows:
        if key is None and label.startswith("PQ things"):
            values = [f"{d['PQ_th']:.1f} / {d['PQ_st']:.1f}" for d in (full, check)]
        elif key is None:
            values = [f"{d['SQ']:.1f} / {d['RQ']:.1f}" for d in (full, check)]
        else:
            values = [f"{d[key]:.1f}" for d in (full, check)]
        table.append(f"| {label} | {values[0]} | {values[1]} |")
    init = record["generator"]["init_args"]
    samples = train["steps"] * train["batch_size"]
    weak_things = "" if full["PQ_th"] >= 5 else (
        "Panoptic post-processing keeps a query only when its top class probability exceeds 0.8: the generator's own "
        "classifier\nknows stuff and colours but rarely a thing's shape with that confidence (its accuracy on seen "
        "things above), so its\nthings hardly enter its own PQ; its masks still find the things (recall), and in "
        "the demo MaskCLIP++ classifies them.\n\n")
    text = f"""# ovs toy mask generator (Mask2Former, tiny ResNet)

A small closed-vocabulary Mask2Former trained from scratch by `tools/pretrain_toy_generator.py` on the synthetic
benchmark of ovs (`docs/synthetic.md`), so that `make demo` runs MaskCLIP++'s full inference (generator masks,
γ-fusion, panoptic / instance post-processing) offline. It knows only the synthetic world.

## Model

`ovs.generators.native.NativeMask2Former` with backbone `{init['backbone']}` (`ovs/generators/native/tiny_resnet.py`:
BasicBlocks at widths 32/64/128/256, strides 4/8/16/32, GroupNorm), {init['enc_layers']} deformable encoder layers,
{init['dec_layers']} masked-attention decoder layers, {init['num_queries']} queries, width {init['hidden_dim']};
{record['parameters'] / 1e6:.2f} M parameters. Classifier: the {init['num_classes']} seen classes
(`{SEEN_NAMES}`) + void. Checkpoint `checkpoints/ovs_toy_generator.pt` ({record['megabytes']:.1f} MB): the fp32
state dict of `Mask2Former` (native key names), read with `torch.load(weights_only=True)`. Load it as the demo does
(`configs/maskclip++_toy_synthetic_generator.yaml`, `generator:` section), with these arguments:

```json
{json.dumps(init, indent=2)}
```

## Data

`train` split of the synthetic benchmark (seed {record['data']['seed']}, {record['data']['num_train']} images of
{record['data']['image_size']} px): only the 27 seen thing classes and the 8 stuff classes appear, so the 9 unseen
classes are never targets. Large-scale jitter (scale 0.5-2.0, crop 112, flip), no colour augmentation.

## Training

* Config `configs/{record['config']}`; {train['steps']} steps of batch {train['batch_size']} ({samples} samples,
  {samples / record['data']['num_train']:.1f} epochs): the poly schedule follows whichever of `max_steps`
  {train['max_steps']} and the time budget of {train['time_budget_minutes']:g} min is further along
  (`--time-budget`), so the number of steps depends on the machine's load.
* Mask2Former's criterion: Hungarian matching, class CE (void weight 0.1) + mask BCE + dice (2 / 5 / 5) on every
  pixel of the prediction grid, deep supervision; AdamW (LR {train['lr']:g}, weight decay 0.05), poly 0.9,
  gradient-norm clip {train['gradient_clip']:g}.
* Wall time {train['wall_minutes']:.1f} min for `trainer.fit`, measured once on {train['machine']}; the
  cores were shared with other jobs (1-minute load average {train['load_before']:.1f} before,
  {train['load_after']:.1f} after), so an idle machine does more steps in the same budget.
* Loss {train['loss_first']:.2f} (first logged step) -> {train['loss_last']:.2f} (last logged step).

## Val numbers of the generator alone

Synthetic `val` split ({full['images']} images, all 44 classes; unseen things included). Recall: a GT segment (thing
instance or stuff region) counts as found when some proposal (mask ≥ 0.5) has IoU ≥ the threshold with it, whatever
the proposal's class (`ovs.evaluation.proposals.ProposalRecall`). PQ: Mask2Former's panoptic post-processing (object /
overlap thresholds 0.8) with the generator's own 35-class classifier, so unseen classes count as missed; "PQ on the 35
seen classes" averages only those.

| metric (%) | val, {full['images']} images | first {check['images']} val images (reproduction check) |
|---|---|---|
{chr(10).join(table)}

{weak_things}Inference {full['seconds_per_image'] * 1000:.0f} ms per image (batch 1, 112 px, CPU, this machine).

## Reproduction check

`tests/generators/test_toy_generator.py` re-renders the first {check['images']} `val` images (seed 0), loads
the checkpoint through the demo config and requires recall@0.5, ABO, PQ and PQ on the seen classes of the right
column within ±{record['tolerance']:g} point (recall and ABO recomputed by brute force in the test). Regenerate
everything with `python tools/pretrain_toy_generator.py --threads 1` (`--eval-only` re-measures the committed weights).
"""
    out.with_suffix(".md").write_text(text)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, overrides = parse_args(argv)
    sys.argv = sys.argv[:1]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    path = resolve_config(args.config)
    cli = OVSCLI(new_run_dir(path, args.output), ["--config", str(path), *overrides], run=False)
    module, datamodule = cli.model, cli.datamodule
    datamodule.prepare_data()
    weights = args.out.with_suffix(".pt")
    json_path = args.out.with_suffix(".json")
    if args.eval_only:
        record = json.loads(json_path.read_text())
    else:
        load_before, start = load_average(), time.perf_counter()
        cli.trainer.callbacks.append(TimeBudgetPoly(args.time_budget, module.hparams.poly_power))
        cli.trainer.fit(module, datamodule=datamodule)
        wall = time.perf_counter() - start
        loss_last = float(cli.trainer.logged_metrics.get("train/loss", float("nan")))
        megabytes = export_weights(module, weights)
        loss_first = first_logged_loss(Path(cli.trainer.default_root_dir))
        hp = module.hparams
        record = {
            "config": Path(path).name,
            "parameters": sum(p.numel() for p in module.model.parameters()),
            "megabytes": megabytes,
            "data": {"split": "train", "seed": datamodule.seed, "num_train": datamodule.num_train,
                     "image_size": datamodule.image_size},
            "training": {"steps": int(cli.trainer.global_step), "batch_size": datamodule.batch_size,
                         "max_steps": cli.trainer.max_steps,
                         "time_budget_minutes": args.time_budget, "lr": hp.lr, "gradient_clip": hp.gradient_clip,
                         "wall_minutes": wall / 60,
                         "machine": machine_description(), "load_before": load_before, "load_after": load_average(),
                         "loss_first": loss_first, "loss_last": loss_last,
                         "date": time.strftime("%Y-%m-%d", time.gmtime())},
            "generator": {"class_path": "ovs.generators.native.NativeMask2Former",
                          "init_args": {"weights": "checkpoints/ovs_toy_generator.pt", **generator_init_args(module)}},
            "tolerance": 1.0,
        }
        json_path.write_text(json.dumps(record, indent=2) + "\n")  # --eval-only can re-measure after a failure
    init = {k: v for k, v in record["generator"]["init_args"].items() if k != "weights"}
    init["training_vocabulary"] = load_class_names(str(REPO_ROOT / init["training_vocabulary"]))
    generator = NativeMask2Former(weights=str(weights), **init)
    datamodule.setup("test")
    dataset = datamodule.test_dataloader().dataset
    is_thing = torch.tensor(datamodule.is_thing, dtype=torch.bool)
    record["val"] = evaluate_generator(generator, dataset, len(dataset), is_thing, datamodule.seen)
    record["check"] = evaluate_generator(generator, dataset, CHECK_IMAGES, is_thing, datamodule.seen)
    write_card(args.out, record)
    print(json.dumps({"val": record["val"], "check": record["check"]}, indent=2))
    written = [] if args.eval_only else [weights]
    print("Wrote " + ", ".join(str(p) for p in [*written, json_path, args.out.with_suffix(".md")]))
    return record


def first_logged_loss(run_dir: Path) -> float:
    """The first ``train/loss`` scalar of the run's TensorBoard events (NaN when none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "train/loss" in accumulator.Tags().get("scalars", []):
            return float(accumulator.Scalars("train/loss")[0].value)
    return float("nan")


if __name__ == "__main__":
    main()

"""Contrastively pre-train the toy CLIP (``ovs-toy-vit``) on the synthetic benchmark's ``pretrain`` split.

Generates the split (cached under ``--root``), trains with open_clip's ``ClipLoss`` (AdamW, linear warm-up + cosine,
bf16 autocast on CPU, FLIP-style patch dropout except for the last ``--unmasked-frac`` of the steps, random resized
crops 0.7-1 and flips, no colour jitter because colour is a class attribute), logs to TensorBoard, saves a pruned fp16
checkpoint, re-loads it and measures zero-shot retrieval, classification and dense (patch-token) segmentation on
held-out ``val`` images, then writes the model card (``.md``) and the metrics sidecar (``.json``) next to it.

Example (about 25 minutes on 2 CPU cores)::

    python tools/pretrain_toy_clip.py --steps 1000
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning threads make a 2-thread
# step about 3x slower (measured); must be set before torch starts its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402
from open_clip.transformer import PatchDropout  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from ovs.backbones import BlockOverride, CLIPViT, ViTPolicy, register_model_configs  # noqa: E402
from ovs.backbones.templates import TEMPLATE_SETS  # noqa: E402
from ovs.runs import machine_description  # noqa: E402
from ovs.data.synthetic.checkpoint import load_pruned_clip_state, save_pruned_clip  # noqa: E402
from ovs.data.synthetic.classes import CLASSES, NUM_CLASSES, SEEN_CLASSES, UNSEEN_CLASSES  # noqa: E402
from ovs.data.synthetic.generate import DEFAULT_ROOT, GENERATOR_VERSION, generate_split  # noqa: E402
from ovs.data.synthetic.toy_clip import (  # noqa: E402
    OPENAI_MEAN,
    OPENAI_STD,
    EvalSet,
    class_prompts,
    encode_texts,
    evaluate_retrieval,
    evaluate_toy_clip,
    load_caption_split,
    load_images,
    normalize,
    random_resized_crop,
    render_eval_set,
)

MODEL_NAME = "ovs-toy-vit"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="synthetic datasets root (generated if missing)")
    p.add_argument("--num-pretrain", type=int, default=20000, help="images in the pretrain split")
    p.add_argument("--seed", type=int, default=0, help="data generation and training seed")
    p.add_argument("--image-size", type=int, default=112, help="image side (must match the model config)")
    p.add_argument("--steps", type=int, default=1000, help="maximum optimisation steps")
    p.add_argument("--time-budget", type=float, default=25.0,
                   help="training wall-time budget in minutes; the schedule follows max(step/steps, time/budget)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay (not on gains, biases, embeddings)")
    p.add_argument("--warmup", type=int, default=60, help="linear warm-up steps")
    p.add_argument("--patch-dropout", type=float, default=0.5, help="fraction of patch tokens dropped (FLIP)")
    p.add_argument("--unmasked-frac", type=float, default=0.15, help="final fraction of steps without patch dropout")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--eval-every", type=int, default=75, help="steps between quick evaluations on 256 val images")
    p.add_argument("--eval-images", type=int, default=1000, help="held-out val images for the final metrics")
    p.add_argument("--dense-images", type=int, default=300, help="held-out val images for the dense metrics")
    p.add_argument("--reproduce-images", type=int, default=256, help="val images of the recorded reproduction check")
    p.add_argument("--output", type=Path, default=Path("checkpoints/ovs_toy_clip.pt"), help="checkpoint path")
    p.add_argument("--log-dir", type=Path, default=Path("outputs/pretrain_toy_clip"), help="TensorBoard directory")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2 or args.time_budget <= 0:
        p.error("need --steps >= 1, --batch-size >= 2 and --time-budget > 0")
    if not 0 <= args.patch_dropout < 1 or not 0 <= args.unmasked_frac <= 1:
        p.error("need 0 <= --patch-dropout < 1 and 0 <= --unmasked-frac <= 1")
    return args


def model_config() -> dict[str, Any]:
    """The open_clip config of ``ovs-toy-vit``."""
    register_model_configs()
    return open_clip.get_model_config(MODEL_NAME)


def used_token_ids(tokenizer: Any, captions: list[list[str]]) -> set[int]:
    """Every token id of the training captions, of all class synonyms and of every ovs template with every class."""
    texts = sorted({c for caps in captions for c in caps})
    for cls in CLASSES:
        for name in cls.synonyms:
            texts += [t.format(name) for templates in TEMPLATE_SETS.values() for t in templates]
    ids: set[int] = set()
    for start in range(0, len(texts), 4096):
        ids |= set(tokenizer(texts[start:start + 4096]).unique().tolist())
    return ids


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices, none on gains, biases, embeddings and the logit scale (open_clip's rule)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        exclude = exclude or "embedding" in name
        (no_decay if exclude else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps times a cosine decay over the training ``progress`` in ``[0, 1]``."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def dense_metrics(model: nn.Module, tokenizer: Any, eval_set: EvalSet) -> dict[str, float]:
    """Zero-shot semantic segmentation from patch tokens (mIoU in percent over the 44 classes).

    Patch tokens of the plain forward (``raw``) and of MaskCLIP's last block (value path only: no q-k attention, no
    residual, no FFN) are matched against ``"a photo of a {}."`` embeddings; logits ``[B, K, 14, 14]`` are upsampled
    bilinearly to the label size. ``random`` is uniform random class per patch (the chance level).
    """
    dense = CLIPViT(model.visual)
    text = encode_texts(model, tokenizer, class_prompts(list(range(NUM_CLASSES))))  # [K, D]
    maskclip = BlockOverride(attention=lambda inputs: inputs.v, residual=False, ffn=False)
    policies = {"raw": ViTPolicy(), "maskclip": ViTPolicy({-1: maskclip})}
    labels = eval_set.sem_seg  # [N, S, S]
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    for name in [*policies, "random"]:
        conf = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
        for start in range(0, len(labels), 64):
            images = eval_set.images[start:start + 64]
            if name == "random":
                g = model.visual.grid_size
                logits = torch.rand(len(images), NUM_CLASSES, *g, generator=gen)
            else:
                result = dense.forward_dense(normalize(images, OPENAI_MEAN, OPENAI_STD), policies[name])
                feats = F.normalize(result.patch_tokens.float(), dim=-1)  # [B, N, D]
                logits = (feats @ text.T).transpose(1, 2).reshape(len(images), NUM_CLASSES, *result.grid)
            pred = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
            target = labels[start:start + 64]
            conf += torch.bincount(target.flatten() * NUM_CLASSES + pred.flatten(), minlength=NUM_CLASSES**2).view(
                NUM_CLASSES, NUM_CLASSES
            )
        tp = conf.diag().float()
        union = conf.sum(0).float() + conf.sum(1).float() - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        out[f"dense_{name}_miou"] = 100.0 * iou.nanmean().item()
        out[f"dense_{name}_miou_seen"] = 100.0 * iou[list(SEEN_CLASSES)].nanmean().item()
        out[f"dense_{name}_miou_unseen"] = 100.0 * iou[list(UNSEEN_CLASSES)].nanmean().item()
        out[f"dense_{name}_pixel_acc"] = 100.0 * (tp.sum() / conf.sum()).item()
    return out


def train(args: argparse.Namespace, model: nn.Module, tokenizer: Any, writer: SummaryWriter) -> dict[str, Any]:
    """Run the contrastive training loop; returns training statistics."""
    paths, captions = load_caption_split(args.root, "pretrain")
    images = load_images(paths)  # [N, 3, S, S] uint8
    tokens = [tokenizer(caps) for caps in captions]  # N x [n_i, L]
    quick_eval = render_eval_set(256, args.seed, args.image_size)
    gen = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    order = torch.randperm(len(images), generator=gen)
    cursor, samples, start, cpu_start = 0, 0, time.time(), time.process_time()
    losses: list[float] = []
    unmasked_steps, stopped_by = 0, "steps"
    model.train()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns) as progress:
        task = progress.add_task("pretrain toy CLIP", total=args.steps, info="")
        for step in range(args.steps):
            # Training progress: whichever of the step budget and the time budget is further along.
            progress_fraction = max(step / args.steps, (time.time() - start) / (60 * args.time_budget))
            if progress_fraction >= 1.0:
                progress.console.print(f"[yellow]time budget of {args.time_budget} min reached after {step} steps")
                stopped_by = "time budget"
                break
            masked = args.patch_dropout > 0 and progress_fraction < 1.0 - args.unmasked_frac
            model.visual.patch_dropout = PatchDropout(args.patch_dropout) if masked else nn.Identity()
            lr = args.lr * lr_factor(step, args.warmup, progress_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if cursor + args.batch_size > len(order):
                order, cursor = torch.randperm(len(images), generator=gen), 0
            idx = order[cursor:cursor + args.batch_size]
            cursor += args.batch_size
            batch = normalize(random_resized_crop(images[idx], args.image_size, generator=gen))  # [B, 3, S, S]
            choice = [int(torch.randint(len(tokens[i]), (1,), generator=gen)) for i in idx.tolist()]
            text = torch.stack([tokens[i][c] for i, c in zip(idx.tolist(), choice)])  # [B, L]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.no_bf16):
                image_features, text_features, logit_scale = model(batch, text)
            loss = loss_fn(image_features.float(), text_features.float(), logit_scale.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            samples += len(idx)
            unmasked_steps += int(not masked)
            losses.append(loss.item())
            elapsed = time.time() - start
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/patch_dropout", args.patch_dropout if masked else 0.0, step)
            writer.add_scalar("train/logit_scale", model.logit_scale.exp().item(), step)
            writer.add_scalar("train/images_per_s", samples / elapsed, step)
            progress.update(task, advance=1, info=f"loss {loss.item():.3f}  {samples / elapsed:.0f} img/s")
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                model.eval()
                quick = evaluate_toy_clip(model, tokenizer, quick_eval)
                model.train()
                for key, value in quick.items():
                    writer.add_scalar(f"val256/{key}", value, step)
                shown = ("i2t_r1", "t2i_r1", "i2t_r5", "thing_acc", "stuff_acc")
                summary = " ".join(f"{k} {quick[k]:.1f}" for k in shown)
                progress.console.print(f"step {step + 1}: loss {loss.item():.3f} {summary}")
    model.visual.patch_dropout = nn.Identity()
    model.eval()
    return {
        "steps_done": len(losses),
        "samples_seen": samples,
        "wall_time_s": round(time.time() - start, 1),
        "cpu_time_s": round(time.process_time() - cpu_start, 1),
        "unmasked_steps": unmasked_steps,
        "stopped_by": stopped_by,
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "first_loss": round(losses[0], 4),
        "num_pretrain_images": len(images),
        "num_pretrain_captions": sum(len(c) for c in captions),
        "used_captions": captions,
    }


def fmt(metrics: dict[str, float], key: str) -> str:
    """A metric rounded for the card."""
    return f"{metrics[key]:.1f}"


def write_card(path: Path, record: dict[str, Any]) -> None:
    """Write the markdown model card from the JSON ``record``."""
    m, t, a = record["metrics"], record["training"], record["args"]
    r = record["reproduce"]
    lines = [
        "# ovs toy CLIP (`ovs-toy-vit`)",
        "",
        "A tiny CLIP trained from scratch by `tools/pretrain_toy_clip.py` on the synthetic benchmark of ovs "
        "(`docs/synthetic.md`), so that every method of ovs can be run and evaluated offline on a laptop CPU. "
        "It knows only the synthetic world: 6 colours x 6 shapes of things and 8 textured backgrounds.",
        "",
        "## Model",
        "",
        "open_clip config `ovs/backbones/model_configs/ovs-toy-vit.json`:",
        "",
        "```json",
        json.dumps(record["model_config"], indent=2),
        "```",
        "",
        f"Checkpoint `{record['checkpoint']}` ({record['checkpoint_bytes'] / 1e6:.1f} MB): fp16 weights, "
        f"token-embedding table pruned to the {record['num_kept_tokens']} token ids used by the training captions, "
        "the class names and every ovs prompt template (other rows load as zeros). Standard CLIP BPE tokenizer "
        "(vocabulary 49408), OpenAI mean/std, QuickGELU, CLS-token pooling. Load it with "
        "`ovs.create_clip(\"ovs-toy-vit\", pretrained=\"checkpoints/ovs_toy_clip.pt\")`.",
        "",
        "## Data",
        "",
        f"`pretrain` split of the synthetic generator (version {record['generator_version']}, seed {a['seed']}): "
        f"{t['num_pretrain_images']} images of {a['image_size']} px with {t['num_pretrain_captions']} captions "
        "(3 complete scene captions per image; one class-level caption per thing class, per shape (without colour) and "
        "per stuff class present, in the phrasing of the prompt templates; 0-5 objects, all 36 thing classes, radius "
        "8-42 % of the side, all things of one colour in half of the images). "
        "Disjoint from `train` / `val` (independent per-image seeds).",
        "",
        "## Training",
        "",
        f"* {t['steps_done']} steps of batch {a['batch_size']} ({t['samples_seen']} image-caption pairs, one random "
        "caption per image and step), open_clip `ClipLoss`, learnable temperature (clamped at 100).",
        f"* AdamW (lr {a['lr']}, betas 0.9/0.98, eps 1e-6, weight decay {a['weight_decay']} on matrices only), "
        f"{a['warmup']} warm-up steps then cosine to 0.",
        f"* bf16 autocast: {not a['no_bf16']}; patch dropout {a['patch_dropout']} (FLIP) except the last "
        f"{a['unmasked_frac']:.0%} of the steps; random resized crop (area 0.7-1, ratio 3/4-4/3) and horizontal flip, "
        "no colour jitter.",
        f"* Wall time {t['wall_time_s'] / 60:.1f} min on {record['machine']}. "
        f"Loss {t['first_loss']:.2f} -> {t['final_loss']:.2f} (mean of the last 20 steps).",
        "",
        "## Zero-shot metrics on held-out images",
        "",
        f"Measured on the re-loaded fp16 checkpoint with the first {a['eval_images']} images of the synthetic `val` "
        f"split (seed {a['seed']}), never seen in training; protocol in `ovs/data/synthetic/toy_clip.py`.",
        "",
        "| metric | value (%) | chance (%) |",
        "|---|---|---|",
        f"| image→text R@1 / R@5 ({a['eval_images']} captions) | {fmt(m, 'i2t_r1')} / {fmt(m, 'i2t_r5')} | "
        f"{100 / a['eval_images']:.1f} / {500 / a['eval_images']:.1f} |",
        f"| text→image R@1 / R@5 | {fmt(m, 't2i_r1')} / {fmt(m, 't2i_r5')} | "
        f"{100 / a['eval_images']:.1f} / {500 / a['eval_images']:.1f} |",
        f"| thing-crop classification, 36 classes ({int(m['num_crops'])} crops) | {fmt(m, 'thing_acc')} | 2.8 |",
        f"| ... seen / unseen classes | {fmt(m, 'thing_acc_seen')} / {fmt(m, 'thing_acc_unseen')} | 2.8 |",
        f"| stuff classification, 8 classes ({int(m['num_stuff_images'])} single-background images) | "
        f"{fmt(m, 'stuff_acc')} | 12.5 |",
        f"| dense zero-shot mIoU, plain patch tokens ({a['dense_images']} images, 44 classes) | "
        f"{fmt(m, 'dense_raw_miou')} | {fmt(m, 'dense_random_miou')} |",
        f"| dense zero-shot mIoU, MaskCLIP last block (seen / unseen) | {fmt(m, 'dense_maskclip_miou')} "
        f"({fmt(m, 'dense_maskclip_miou_seen')} / {fmt(m, 'dense_maskclip_miou_unseen')}) | "
        f"{fmt(m, 'dense_random_miou')} |",
        f"| dense pixel accuracy, plain / MaskCLIP | {fmt(m, 'dense_raw_pixel_acc')} / "
        f"{fmt(m, 'dense_maskclip_pixel_acc')} | {fmt(m, 'dense_random_pixel_acc')} |",
        "",
        "Thing crops: a square of 1.6x the longer side of the instance's visible box (at least 24 px) resized to "
        "112 px, classified with `\"a photo of a {}.\"` and the first class name. Retrieval: one caption per image "
        "(the first scene caption); a retrieved caption/image counts as correct when its caption text equals the "
        "query's. Dense: patch tokens (14x14) against `\"a photo of a {}.\"` for all 44 classes, bilinear upsampling.",
        "",
        "## Reproduction check",
        "",
        f"`tests/data/synthetic/test_toy_clip.py` re-renders the first {r['num_images']} `val` images "
        f"(seed {r['seed']}) and requires the retrieval metrics of `{Path(record['checkpoint']).stem}.json` "
        f"within ±{r['tolerance']} points: " + ", ".join(f"{k} {v:.1f}" for k, v in r["metrics"].items()) + ".",
        "",
        "Regenerate with `python tools/pretrain_toy_clip.py "
        f"--steps {a['steps']} --time-budget {a['time_budget']:g} --batch-size {a['batch_size']} "
        f"--num-pretrain {a['num_pretrain']} --seed {a['seed']}` (the time budget decides how many steps run: "
        f"{t['steps_done']} here).",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = model_config()
    if cfg["vision_cfg"]["image_size"] != args.image_size:
        size = cfg["vision_cfg"]["image_size"]
        raise SystemExit(f"--image-size {args.image_size} differs from the model config ({size})")
    t0 = time.time()
    generate_split(args.root, "pretrain", args.num_pretrain, args.seed, args.image_size)
    print(f"pretrain split ready in {time.time() - t0:.0f} s under {args.root}")
    model = open_clip.create_model(MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    writer = SummaryWriter(str(args.log_dir))
    stats = train(args, model, tokenizer, writer)
    captions = stats.pop("used_captions")
    kept = used_token_ids(tokenizer, captions)
    meta = {"model_name": MODEL_NAME, "quick_gelu": bool(cfg.get("quick_gelu", False)), "mean": list(OPENAI_MEAN),
            "std": list(OPENAI_STD), "trained_by": "tools/pretrain_toy_clip.py"}
    save_pruned_clip(model, args.output, kept, meta)

    state, _ = load_pruned_clip_state(args.output)
    reloaded = open_clip.create_model(MODEL_NAME, pretrained=None)
    reloaded.load_state_dict(state)
    reloaded.eval()
    print("evaluating the saved checkpoint ...")
    eval_set = render_eval_set(args.eval_images, args.seed, args.image_size)
    metrics = evaluate_toy_clip(reloaded, tokenizer, eval_set)
    metrics |= dense_metrics(reloaded, tokenizer, render_eval_set(args.dense_images, args.seed, args.image_size))
    reproduce_set = render_eval_set(args.reproduce_images, args.seed, args.image_size)
    reproduce = evaluate_retrieval(reloaded, tokenizer, reproduce_set)
    for key, value in metrics.items():
        writer.add_scalar(f"final/{key}", value, stats["steps_done"])
    writer.close()
    record = {
        "model_name": MODEL_NAME,
        "checkpoint": str(args.output),
        "checkpoint_bytes": args.output.stat().st_size,
        "num_kept_tokens": len(kept),
        "generator_version": GENERATOR_VERSION,
        "model_config": cfg,
        "machine": machine_description(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "training": stats,
        "metrics": {k: round(v, 2) for k, v in metrics.items()},
        "reproduce": {
            "split": "val",
            "seed": args.seed,
            "image_size": args.image_size,
            "num_images": args.reproduce_images,
            "tolerance": 2.0,
            "metrics": {k: round(v, 2) for k, v in reproduce.items()},
        },
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
    }
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    write_card(args.output.with_suffix(".md"), record)
    print(json.dumps(record["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput and peak memory of the training-free methods (docs/performance.md).

    python tools/benchmark.py                                   # all methods, both protocols, auto device
    python tools/benchmark.py --methods sclip,gem --protocol gem --device cuda --iters 20 --batch 16

Protocols (training-free spec §2.3, §3.1), on random OpenAI-architecture ViT-B/16 weights (QuickGELU) and random
uint8 images, text embeddings precomputed for the SCLIP VOC-21 vocabulary (21 classes; random unit vectors for the
SCLIP protocol, the random text tower's ``a photo of a {}.`` embeddings for the GEM protocol):

* ``sclip``: 375 x 500 images (PASCAL VOC's typical size) -> short side 336 -> 2 x 3 windows of 224, stride 112 ->
  logits back at 375 x 500 -> VOC-21 post-processing (56 names, logit scale 65, synonym max, area 0.1,
  probability 0.1).
* ``gem``: 448 x 448 images, whole image (785 tokens) -> GEM's VOC rule (one name per class, 20 foreground classes,
  argmax of min-max maps, background where softmax(100 cos) < 0.85).

Every method runs its own attention policy (NACLIP keeps its default PAMR). For SCLIP and GEM the benchmark also
times a re-creation of the authors' released inference loop, written from the spec (their code is not downloaded):
SCLIP = one window at a time through a sequence-first (LND) ViT with explicit ``bmm`` attention maps in the last
block, canvas updates through full-size ``F.pad``, synonyms merged by the ``[K, K_names, H, W]`` one-hot product;
GEM = the ``gem_torch`` wrapper's sequence-first forward with explicit q-k and self-self attention maps on the last
blocks, timed twice: with the text embeddings cached (``reference``, the image path alone) and as the released
``GEMWrapper.forward(image, text)``, which encodes the prompts on every call (``reference-api``). Label maps of ovs
and the re-creation are compared (agreement in percent of pixels) so both compute the same thing.

Each measurement runs in its own subprocess: peak memory is ``torch.cuda.max_memory_allocated`` during the timed runs
on CUDA (weights included) and, on CPU, the peak of live tensor bytes during one extra untimed call, from the PyTorch
profiler's allocation / free events (weights excluded; that call doubles as the first warm-up). ``--rounds N`` alternates the
implementations N times and keeps each one's fastest round (for shared, noisy machines).
CUDA runs autocast in bf16 (ovs) and fp16 autocast for the SCLIP re-creation (SCLIP casts its weights to fp16);
GEM's package runs fp32. CPU runs fp32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ovs.backbones import (  # noqa: E402
    CLIP, TextClassifier, build_text_classifier, create_clip, interpolate_pos_embed,
)
from ovs.data import load_class_names  # noqa: E402
from ovs.inference import resize_for_inference  # noqa: E402
from ovs.methods import METHODS  # noqa: E402

PROTOCOLS: dict[str, dict[str, Any]] = {
    "sclip": {
        "image_size": (375, 500),
        "synonyms": True,
        "inference": {"resize": "short", "size": 336, "slide_crop": 224, "slide_stride": 112, "pad_to_patch": False,
                      "logit_scale": 65.0, "prob_thd": 0.1, "area_thd": 0.1, "score": "probability",
                      "foreground_only": False},
    },
    "gem": {
        "image_size": (448, 448),
        "synonyms": False,
        "inference": {"resize": "none", "slide_crop": 0, "pad_to_patch": False, "logit_scale": 100.0,
                      "prob_thd": 0.85, "area_thd": None, "score": "minmax", "foreground_only": True},
    },
}
BASELINES = {"sclip": "sclip", "gem": "gem"}  # protocol -> method with an authors'-loop re-creation
REFERENCES = {"sclip": ("reference",), "gem": ("reference", "reference-api")}
"""Re-creations per protocol: ``reference`` = the image path with cached text; ``reference-api`` = GEM's released
``GEMWrapper.forward``, which also encodes the prompts on every call."""
REFERENCE_IMPLEMENTATIONS = tuple(dict.fromkeys(name for names in REFERENCES.values() for name in names))
VOCABULARY = "sclip_voc21"


# --------------------------------------------------------------------------------------------------------------------
# Re-creations of the authors' released inference loops (from training-free spec §2.2-2.4, §3.2-3.3)


def seq_first_attention(block: torch.nn.Module, x: Tensor) -> Tensor:
    """``nn.MultiheadAttention(batch_first=False)`` as in OpenAI CLIP / open_clip <= 2.23 (no fast path): LND."""
    attn = block.attn
    return F.multi_head_attention_forward(
        x, x, x, attn.embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False,
    )[0]


def seq_first_block(block: torch.nn.Module, x: Tensor) -> Tensor:
    x = x + seq_first_attention(block, block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


def heads_first(t: Tensor, num_heads: int) -> Tensor:
    """``[L, N, C] -> [N * H, L, d]`` (the reference's ``contiguous().view().transpose()``)."""
    length, batch, width = t.shape
    return t.contiguous().view(length, batch * num_heads, width // num_heads).transpose(0, 1)


def merge_heads(t: Tensor, batch: int) -> Tensor:
    """``[N * H, L, d] -> [L, N, C]``."""
    return t.transpose(0, 1).contiguous().view(t.shape[1], batch, -1)


def embed_seq_first(clip: CLIP, image: Tensor, pos_mode: str) -> tuple[Tensor, tuple[int, int]]:
    visual = clip.model.visual
    x = visual.conv1(image)
    grid = (x.shape[-2], x.shape[-1])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                        device=x.device), x], dim=1)
    x = x + interpolate_pos_embed(visual.positional_embedding, tuple(visual.grid_size), grid, pos_mode)
    return visual.ln_pre(x).permute(1, 0, 2), grid  # LND


class SCLIPReference:
    """SCLIP's ``CLIPForSegmentation.predict`` loop (spec §2.2-2.4), batch size 1, one window per forward."""

    def __init__(self, clip: CLIP, classifier: TextClassifier, config: dict[str, Any], autocast: Any) -> None:
        self.clip, self.text, self.config, self.autocast = clip, classifier.embeddings, config, autocast
        self.query_idx = classifier.name_to_class

    def encode_image(self, image: Tensor) -> Tensor:
        visual = self.clip.model.visual
        x, _ = embed_seq_first(self.clip, image, "dino")
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            x = seq_first_block(block, x)
        last = blocks[-1]
        y = last.ln_1(x)
        q, k, v = F.linear(y, last.attn.in_proj_weight, last.attn.in_proj_bias).chunk(3, dim=-1)
        heads = last.attn.num_heads
        q, k, v = (heads_first(t, heads) for t in (q, k, v))
        scale = q.shape[-1] ** -0.5
        attn = torch.softmax(torch.bmm(q * scale, q.transpose(1, 2)), -1)
        attn = attn + torch.softmax(torch.bmm(k * scale, k.transpose(1, 2)), -1)
        out = F.linear(merge_heads(torch.bmm(attn, v), x.shape[1]), last.attn.out_proj.weight, last.attn.out_proj.bias)
        x = x + out
        x = x + last.mlp(last.ln_2(x))
        return visual.ln_post(x.permute(1, 0, 2)) @ visual.proj

    def forward_feature(self, crop: Tensor) -> Tensor:
        with self.autocast():
            features = self.encode_image(crop)
        features = features.float()
        features = features / features.norm(dim=-1, keepdim=True)
        logits = features[:, 1:] @ self.text.T
        patch = self.clip.dense.patch_size[0]
        h, w = crop.shape[-2] // patch, crop.shape[-1] // patch
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], h, w)
        return F.interpolate(logits, size=crop.shape[-2:], mode="bilinear")

    def forward_slide(self, image: Tensor, ori_shape: tuple[int, int]) -> Tensor:
        stride, crop = self.config["slide_stride"], self.config["slide_crop"]
        _, _, h_img, w_img = image.shape
        h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
        w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
        preds = image.new_zeros((1, len(self.query_idx), h_img, w_img))
        count_mat = image.new_zeros((1, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * stride, w_idx * stride
                y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
                y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
                crop_logits = self.forward_feature(image[:, :, y1:y2, x1:x2])
                preds += F.pad(crop_logits, (x1, w_img - x2, y1, h_img - y2))
                count_mat[:, :, y1:y2, x1:x2] += 1
        return F.interpolate(preds / count_mat, size=ori_shape, mode="bilinear")

    def postprocess(self, seg_logits: Tensor) -> Tensor:
        seg_logits = (seg_logits[0] * self.config["logit_scale"]).softmax(0)  # [K_names, H, W]
        num_cls, num_queries = int(self.query_idx.max()) + 1, len(self.query_idx)
        if num_cls != num_queries:
            cls_index = F.one_hot(self.query_idx).T.view(num_cls, num_queries, 1, 1).to(seg_logits.dtype)
            seg_logits = (seg_logits.unsqueeze(0) * cls_index).max(1)[0]
        if self.config["area_thd"] is not None:
            predictions = F.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
            area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)
            area_pred = (area_pred > self.config["area_thd"] * area_pred.sum()).to(seg_logits.dtype)
            seg_logits[1:] *= area_pred.transpose(0, -1)
        seg_pred = seg_logits.argmax(0, keepdim=True)
        seg_pred[seg_logits.max(0, keepdim=True)[0] < self.config["prob_thd"]] = 0
        return seg_pred[0]

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        labels = []
        for image in images:
            resized = resize_for_inference(image, "short", self.config["size"], 2048)
            normalised = self.clip.normalize(resized[None])
            labels.append(self.postprocess(self.forward_slide(normalised, tuple(image.shape[-2:]))))
        return labels


class GEMReference:
    """The ``gem_torch`` wrapper forward (spec §3.2-3.3) with the VOC background rule, batch size 1.

    ``prompts_per_call``: encode the prompts on every call, as ``GEMWrapper.forward(image, text)`` and
    ``batched_forward`` do (the package has no way to pass cached text embeddings); otherwise use the precomputed
    embeddings (the image path alone).
    """

    def __init__(
        self, clip: CLIP, classifier: TextClassifier, depth: int, class_ids: Tensor, prompts_per_call: bool = False
    ) -> None:
        self.clip, self.depth = clip, depth
        keep = torch.isin(classifier.name_to_class, class_ids)
        self.text = classifier.embeddings[keep]
        self.prompts = [f"a photo of a {classifier.class_names[c][0]}."
                        for c in classifier.name_to_class[keep].tolist()]
        self.prompts_per_call = prompts_per_call
        self.class_ids = class_ids

    def encode_image(self, image: Tensor) -> Tensor:
        visual = self.clip.model.visual
        x, grid = embed_seq_first(self.clip, image, "timm")
        blocks = visual.transformer.resblocks
        start = len(blocks) - self.depth
        for block in blocks[:start]:
            x = seq_first_block(block, x)
        x_gem = x
        for block in blocks[start:]:
            y = block.ln_1(x)
            q, k, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
            heads, batch = block.attn.num_heads, x.shape[1]
            q, k, v = (heads_first(t, heads) for t in (q, k, v))
            scale = q.shape[-1] ** -0.5
            attn = torch.softmax(torch.bmm(q * scale, k.transpose(1, 2)), -1)
            x_ori = F.linear(merge_heads(torch.bmm(attn, v), batch), block.attn.out_proj.weight,
                             block.attn.out_proj.bias)
            inv_temp = (y.norm(dim=-1).mean(dim=0) * scale).repeat_interleave(heads)[:, None, None]  # [N * H, 1, 1]
            outputs = []
            for z in (v, k, q):
                z = F.normalize(z, dim=-1)
                z = torch.softmax(torch.bmm(z, z.transpose(1, 2)) * inv_temp, -1) @ z
                z = F.normalize(z, dim=-1)
                outputs.append(torch.softmax(torch.bmm(z, z.transpose(1, 2)) * inv_temp, -1) @ v)
            x_ss = F.linear(merge_heads(sum(outputs) / 3, batch), block.attn.out_proj.weight,
                            block.attn.out_proj.bias)
            x_gem = x_gem + x_ss
            x = x + x_ori
            x = x + block.mlp(block.ln_2(x))
        feat_gem = visual.ln_post(x_gem.permute(1, 0, 2)) @ visual.proj
        visual.ln_post(x.permute(1, 0, 2)) @ visual.proj  # feat_ori, returned by the wrapper as well
        return feat_gem

    def __call__(self, images: list[Tensor]) -> list[Tensor]:
        labels = []
        patch = self.clip.dense.patch_size[0]
        for image in images:
            normalised = self.clip.normalize(image[None])
            features = F.normalize(self.encode_image(normalised)[:, 1:], dim=-1)
            text = self.clip.encode_text(self.prompts) if self.prompts_per_call else self.text
            h, w = normalised.shape[-2] // patch, normalised.shape[-1] // patch
            logits = (features @ text.T).permute(0, 2, 1).reshape(1, -1, h, w)
            logits = F.interpolate(logits, size=normalised.shape[-2:], mode="bilinear")[0]  # [K, H, W]
            low = logits.amin(dim=(1, 2), keepdim=True)
            minmax = (logits - low) / (logits.amax(dim=(1, 2), keepdim=True) - low)
            pred = self.class_ids[minmax.argmax(0)]
            pred[torch.softmax(100 * logits, dim=0).max(0)[0] < 0.85] = 0
            labels.append(pred)
        return labels


# --------------------------------------------------------------------------------------------------------------------
# One measurement (worker process)


def peak_tensor_memory(run: Callable[[], object]) -> int:
    """Peak bytes of live CPU tensors during ``run()``, from the profiler's allocation and free events (one extra,
    untimed run; library pages and allocator caches do not count)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    deltas = []
    for event in prof.events():
        amount = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if amount:
            deltas.append((event.time_range.start, amount))
    current = peak = 0
    for _, amount in sorted(deltas):
        current += amount
        peak = max(peak, current)
    return peak


def gem_classifier(clip: CLIP) -> TextClassifier:
    """GEM protocol: the (random) text tower's embeddings of ``a photo of a {}.`` for the first name of each VOC-21
    class, so that the released-API re-creation, which encodes the prompts itself, gives the same logits."""
    names = [synonyms[:1] for synonyms in load_class_names(VOCABULARY)]
    return build_text_classifier(clip, names, templates="single")


def random_classifier(clip: CLIP, device: torch.device, synonyms: bool) -> TextClassifier:
    """Random unit text embeddings for the SCLIP VOC-21 vocabulary, with its synonyms (56 names) or only the first
    name of each class; the SCLIP protocol times images, not text (SCLIP encodes its prompts once)."""
    names = load_class_names(VOCABULARY)
    if not synonyms:
        names = [synonyms_of_class[:1] for synonyms_of_class in names]
    name_to_class = torch.tensor([c for c, synonyms in enumerate(names) for _ in synonyms])
    generator = torch.Generator().manual_seed(1)
    embeddings = F.normalize(torch.randn(len(name_to_class), clip.embed_dim, generator=generator), dim=-1)
    return TextClassifier(embeddings, embeddings[:, None], name_to_class, names, ("{}",)).to(device)


def measure(method: str, implementation: str, protocol: str, device: torch.device, batch: int, warmup: int,
            iters: int) -> dict[str, Any]:
    torch.manual_seed(0)
    clip = create_clip("ViT-B-16", None, force_quick_gelu=True).to(device).eval()
    settings = PROTOCOLS[protocol]
    classifier = gem_classifier(clip) if protocol == "gem" else random_classifier(clip, device, settings["synonyms"])
    generator = torch.Generator().manual_seed(2)
    images = [torch.randint(0, 256, (3, *settings["image_size"]), dtype=torch.uint8, generator=generator).to(device)
              for _ in range(batch)]
    cuda = device.type == "cuda"
    cpu_precision = "bf16" if implementation == "ovs-bf16" else "fp32"
    segmenter = METHODS[method](clip=clip, inference={**settings["inference"], "precision": "bf16",
                                                      "cpu_precision": cpu_precision})
    segmenter.set_vocabulary(classifier.class_names, 0, classifier)
    run: Callable[[], list[Tensor]]
    if implementation in ("ovs", "ovs-bf16"):
        run = lambda: [r.labels for r in segmenter.segment(images)]  # noqa: E731
    elif protocol == "sclip":
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext
        reference = SCLIPReference(clip, classifier, asdict(segmenter.config), autocast)
        run = torch.inference_mode()(lambda: reference(images))
    else:
        gem_reference = GEMReference(clip, classifier, segmenter.depth, torch.arange(1, 21, device=device),
                                     prompts_per_call=implementation == "reference-api")
        run = torch.inference_mode()(lambda: gem_reference(images))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = 0 if cuda else peak_tensor_memory(run)  # CPU: also the first (warm-up) call
    for _ in range(warmup):
        run()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        labels = run()
    sync()
    elapsed = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    return {
        "method": method, "implementation": implementation, "protocol": protocol, "device": str(device),
        "images_per_s": batch * iters / elapsed, "peak_memory_mb": peak / 2**20, "batch": batch, "iters": iters,
        "labels": [label.cpu().tolist() for label in labels[:1]] if method in BASELINES.values() else None,
    }


# --------------------------------------------------------------------------------------------------------------------
# Driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    parser.add_argument("--protocol", choices=["sclip", "gem", "both"], default="both")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default: 1 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed iterations (default: 0 on CPU after the memory-profiling call, 3 on CUDA)")
    parser.add_argument("--batch", type=int, default=None, help="images per call (default: 1 on CPU, 16 on CUDA)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the authors'-loop re-creations")
    parser.add_argument("--cpu-bf16", action="store_true", help="on CPU, also time ovs with bf16 autocast")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every implementation this many times, alternating, and keep the best "
                             "(for shared, noisy machines)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "IMPLEMENTATION", "PROTOCOL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device must be cpu, cuda (available: {torch.cuda.is_available()}) or auto.")
    cuda = args.device == "cuda"
    args.iters = args.iters if args.iters is not None else (20 if cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    args.batch = args.batch if args.batch is not None else (16 if cuda else 1)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}.")
    if min(args.iters, args.batch, args.rounds) < 1 or args.warmup < 0:
        parser.error("--iters, --batch and --rounds must be >= 1, --warmup >= 0.")
    return args


def run_worker(args: argparse.Namespace, method: str, implementation: str, protocol: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--worker", method, implementation, protocol]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {method}/{implementation}/{protocol} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker:
        method, implementation, protocol = args.worker
        print(json.dumps(measure(method, implementation, protocol, torch.device(args.device), args.batch,
                                 args.warmup, args.iters)))
        return []
    protocols = ["sclip", "gem"] if args.protocol == "both" else [args.protocol]
    rows = []
    for protocol in protocols:
        for method in args.methods.split(","):
            ours_impls = ["ovs"] + (["ovs-bf16"] if args.device == "cpu" and args.cpu_bf16 else [])
            with_baseline = not args.no_baseline and BASELINES[protocol] == method
            references = REFERENCES[protocol] if with_baseline else ()
            results: dict[str, dict[str, Any]] = {}
            for _ in range(args.rounds):  # alternate implementations, keep each one's best round
                for impl in [*ours_impls, *references]:
                    result = run_worker(args, method, impl, protocol)
                    if impl not in results or result["images_per_s"] > results[impl]["images_per_s"]:
                        results[impl] = result
            for reference_impl in references:
                reference = results[reference_impl]
                for impl in ours_impls:
                    ours, theirs = torch.tensor(results[impl]["labels"]), torch.tensor(reference["labels"])
                    results[impl][f"agreement_pct_{reference_impl}"] = 100 * float((ours == theirs).float().mean())
                    results[impl][f"speedup_vs_{reference_impl}"] = (
                        results[impl]["images_per_s"] / reference["images_per_s"]
                    )
            for result in results.values():
                result.pop("labels")
                rows.append(result)
                print(format_row(result), flush=True)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))
    return rows


def format_row(row: dict[str, Any]) -> str:
    extra = ""
    for reference in REFERENCE_IMPLEMENTATIONS:
        if f"speedup_vs_{reference}" in row:
            extra += (f"  x{row[f'speedup_vs_{reference}']:.2f} vs {reference} "
                      f"(labels {row[f'agreement_pct_{reference}']:.2f} % equal)")
    return (f"{row['protocol']:5s} {row['method']:12s} {row['implementation']:9s} {row['device']:5s} "
            f"{row['images_per_s']:9.3f} img/s  peak {row['peak_memory_mb']:8.1f} MiB{extra}")


if __name__ == "__main__":
    main()

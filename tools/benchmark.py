"""Throughput and peak memory of the training-free methods (docs/performance.md).

    python tools/benchmark.py                                   # all methods, both protocols, auto device
    python tools/benchmark.py --methods sclip,gem --protocol gem --device cuda --iters 20 --batch 16
    python tools/benchmark.py --methods gem --protocol gem --precisions bf16,fp32 --batch-sizes 1,32,128 --json r.json

Protocols (training-free spec §2.3, §3.1), on random OpenAI-architecture ViT-B/16 weights (QuickGELU) and random
uint8 images, text embeddings precomputed for the SCLIP VOC-21 vocabulary (21 classes; random unit vectors for the
SCLIP protocol, the random text tower's ``a photo of a {}.`` embeddings for the GEM protocol):

* ``sclip``: 375 x 500 images (PASCAL VOC's typical size) -> short side 336 -> 2 x 3 windows of 224, stride 112 ->
  logits back at 375 x 500 -> VOC-21 post-processing (56 names, logit scale 65, synonym max, area 0.1,
  probability 0.1).
* ``gem``: 448 x 448 images, whole image (785 tokens) -> GEM's VOC rule (one name per class, 20 foreground classes,
  argmax of min-max maps, background where softmax(100 cos) < 0.85).

Every method runs its own attention policy (NACLIP keeps its default PAMR). For SCLIP and GEM the benchmark also
times a re-creation of the authors' released inference loop (``tools/benchmark_references.py``), written from
the spec (their code is not downloaded):
SCLIP = one window at a time through a sequence-first (LND) ViT with explicit ``bmm`` attention maps in the last
block, canvas updates through full-size ``F.pad``, synonyms merged by the ``[K, K_names, H, W]`` one-hot product;
GEM = the ``gem_torch`` wrapper's sequence-first forward with explicit q-k and self-self attention maps on the last
blocks, timed twice: with the text embeddings cached (``reference``, the image path alone) and as the released
``GEMWrapper.forward(image, text)``, which encodes the prompts on every call (``reference-api``). Label maps of ovs
and the re-creation are compared (agreement in percent of pixels) so both compute the same thing.

Each implementation runs in its own subprocess, which times every batch size of ``--batch-sizes`` in turn: peak
memory is ``torch.cuda.max_memory_allocated`` during the timed runs on CUDA (weights included) and, on CPU, the peak of
live tensor bytes during one extra untimed call, from the PyTorch profiler's allocation / free events (weights
excluded; that call doubles as the first warm-up). ``--rounds N`` alternates the implementations N times and keeps
each one's fastest round (for shared, noisy machines).
Implementations: ``ovs`` runs the device default (CUDA: bf16 autocast, the ``precision`` default; CPU: fp32),
``ovs-bf16`` / ``ovs-fp16`` / ``ovs-fp32`` (``--precisions``) force one; ``--compile`` wraps the window encoder in
``torch.compile`` (suffix ``+compile``). The SCLIP re-creation runs fp16 autocast on CUDA (SCLIP casts its weights to
fp16), GEM's package fp32; both fp32 on CPU; the re-creations loop over the images one by one.

Every row also holds the model FLOPs per image (:func:`vit_forward_flops`: the standard ViT forward of every window,
the method's extra attention not counted) and, for bf16 / fp16 on a GPU whose peak is known (``--peak-tflops`` or
:data:`BF16_PEAK_TFLOPS`), the model FLOPs utilisation (MFU).
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

sys.path.insert(0, str(REPO_ROOT / "tools"))

from benchmark_references import GEMReference, SCLIPReference  # noqa: E402
from ovs.backbones import CLIP, TextClassifier, build_text_classifier, create_clip  # noqa: E402
from ovs.data import load_class_names  # noqa: E402
from ovs.inference import resize_for_inference  # noqa: E402
from ovs.inference.slide import window_grid  # noqa: E402
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
OVS_PRECISIONS = ("bf16", "fp16", "fp32")
BF16_PEAK_TFLOPS = {"H200 NVL": 835.5, "H200": 989.5, "H100 PCIe": 756.0, "H100 NVL": 835.5, "H100": 989.5,
                    "A100": 312.0}
"""Dense bf16 tensor-core peak (TFLOP/s, NVIDIA datasheets: half the "with sparsity" figure) by device-name substring,
most specific first; H100 / H200 SXM: 989.5."""


# --------------------------------------------------------------------------------------------------------------------
# Model FLOPs


def vit_forward_flops(tokens: int, width: int, depth: int, patch: int, out_dim: int, mlp_ratio: float = 4.0) -> int:
    """FLOPs (2 per multiply-add) of one standard ViT forward over ``tokens`` = 1 + N tokens: patch embedding
    ``2 N (3 p^2) C``; per block the q/k/v, output and MLP projections ``2 S C (3C + C + 2 r C)`` and the attention
    matmuls ``q k^T`` and ``A v``, ``4 S^2 C``; the head projection ``2 S C D``. Norms, softmax and activations are
    not counted (the MFU convention: matmul FLOPs of the model)."""
    patches = tokens - 1
    block = 2 * tokens * width * (4 * width + 2 * int(mlp_ratio * width)) + 4 * tokens**2 * width
    return 2 * patches * 3 * patch**2 * width + depth * block + 2 * tokens * width * out_dim


def protocol_flops_per_image(clip: CLIP, protocol: str, image_size: tuple[int, int]) -> int:
    """Model FLOPs of one ``image_size`` image under ``protocol``: :func:`vit_forward_flops` of each window."""
    config = PROTOCOLS[protocol]["inference"]
    image = torch.zeros(3, *image_size, dtype=torch.uint8)
    resized = resize_for_inference(image, config["resize"], config.get("size", 0), 2048)
    dense, patch = clip.dense, clip.dense.patch_size[0]
    mlp_ratio = dense.blocks[0].mlp.c_fc.out_features / dense.width
    total = 0
    for y1, x1, y2, x2 in window_grid(*resized.shape[-2:], config["slide_crop"], config.get("slide_stride", 1)):
        tokens = 1 + ((y2 - y1) // patch) * ((x2 - x1) // patch)
        total += vit_forward_flops(tokens, dense.width, dense.num_blocks, patch, dense.output_dim, mlp_ratio)
    return total


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a known GPU (:data:`BF16_PEAK_TFLOPS`), else ``None``."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in device_name), None)


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


def ovs_precision(implementation: str, device: torch.device) -> str:
    """Autocast precision of an ``ovs[-<precision>][+compile]`` implementation on ``device``."""
    name = implementation.removesuffix("+compile")
    if name == "ovs":
        return "bf16" if device.type == "cuda" else "fp32"
    precision = name.removeprefix("ovs-")
    if precision not in OVS_PRECISIONS or (device.type == "cpu" and precision == "fp16"):
        raise ValueError(f"Unknown implementation {implementation!r} on {device.type}.")
    return precision


def measure(method: str, implementation: str, protocol: str, device: torch.device, batches: list[int], warmup: int,
            iters: int, peak_tflops: float | None = None, model: str = "ViT-B-16",
            image_size: tuple[int, int] | None = None, window_batch: int | None = None,
            compile_mode: str = "default") -> list[dict[str, Any]]:
    """Time ``implementation`` of ``method`` under ``protocol`` at every batch size of ``batches`` (one row each),
    on random ``model`` weights and random images of ``image_size`` (default: the protocol's); ``window_batch``
    overrides the most windows per forward (ovs' ``window_batch``, default 32)."""
    torch.manual_seed(0)
    clip = create_clip(model, None, force_quick_gelu=True).to(device).eval()
    settings = PROTOCOLS[protocol]
    image_size = image_size or settings["image_size"]
    classifier = gem_classifier(clip) if protocol == "gem" else random_classifier(clip, device, settings["synonyms"])
    cuda = device.type == "cuda"
    ours = implementation.startswith("ovs")
    precision = ovs_precision(implementation, device) if ours else ("fp16" if protocol == "sclip" and cuda else "fp32")
    overrides = {"precision": precision, "cpu_precision": precision if not cuda else "fp32"}
    if window_batch is not None:
        overrides["window_batch"] = window_batch
    segmenter = METHODS[method](clip=clip, inference={**settings["inference"], **overrides})
    segmenter.set_vocabulary(classifier.class_names, 0, classifier)
    if implementation.endswith("+compile"):
        segmenter.encode_windows = torch.compile(segmenter.encode_windows, dynamic=False, mode=compile_mode)
    flops = protocol_flops_per_image(clip, protocol, image_size)
    if peak_tflops is None and cuda:
        peak_tflops = bf16_peak_tflops(torch.cuda.get_device_name(device))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    generator = torch.Generator().manual_seed(2)
    pool = [torch.randint(0, 256, (3, *image_size), dtype=torch.uint8, generator=generator).to(device)
            for _ in range(max(batches))]
    for batch in batches:
        images = pool[:batch]  # the same first image at every batch size (label agreement)
        run: Callable[[], list[Tensor]]
        if ours:
            run = lambda: [r.labels for r in segmenter.segment(images)]  # noqa: E731
        elif protocol == "sclip":
            autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext
            reference = SCLIPReference(clip, classifier, asdict(segmenter.config), autocast)
            run = torch.inference_mode()(lambda: reference(images))
        else:
            gem_reference = GEMReference(clip, classifier, segmenter.depth, torch.arange(1, 21, device=device),
                                         prompts_per_call=implementation == "reference-api")
            run = torch.inference_mode()(lambda: gem_reference(images))
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
        images_per_s = batch * iters / elapsed
        row = {
            "model": model, "image_size": list(image_size), "method": method, "implementation": implementation,
            "protocol": protocol, "device": str(device),
            "precision": precision, "window_batch": segmenter.config.window_batch,
            "compile_mode": compile_mode if implementation.endswith("+compile") else None,
            "images_per_s": images_per_s, "peak_memory_mb": peak / 2**20, "batch": batch,
            "iters": iters, "model_gflop_per_image": flops / 1e9,
            "model_tflop_per_s": flops * images_per_s / 1e12,
            "mfu_pct": (100 * flops * images_per_s / (peak_tflops * 1e12)
                        if peak_tflops and cuda and precision in ("bf16", "fp16") else None),
            "labels": labels[0].cpu().tolist(),
        }
        rows.append(row)
    return rows


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
    parser.add_argument("--batch-sizes", default=None,
                        help="comma-separated images per call, each timed (ovs; the re-creations run the first)")
    parser.add_argument("--precisions", default=None,
                        help="comma-separated ovs precisions to time (bf16, fp16, fp32; fp16 on CUDA only) instead "
                             "of the device default")
    parser.add_argument("--compile", action="store_true", help="also time ovs with torch.compile (window encoder)")
    parser.add_argument("--compile-mode", default="default",
                        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                        help="torch.compile mode (reduce-overhead: CUDA graphs)")
    parser.add_argument("--window-batch", type=int, default=None,
                        help="most windows per backbone forward (ovs window_batch; default 32)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="bf16 peak of the GPU for the MFU (default: looked up by device name)")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip ViT (random weights)")
    parser.add_argument("--image-size", default=None, metavar="H,W",
                        help="image size instead of the protocol's (375,500 / 448,448), e.g. for smoke runs")
    parser.add_argument("--no-baseline", action="store_true", help="skip the authors'-loop re-creations")
    parser.add_argument("--cpu-bf16", action="store_true", help="on CPU, also time ovs with bf16 autocast")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every implementation this many times, alternating, and keep the best "
                             "(for shared, noisy machines)")
    parser.add_argument("--output", "--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "IMPLEMENTATION", "PROTOCOL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device must be cpu, cuda (available: {torch.cuda.is_available()}) or auto.")
    cuda = args.device == "cuda"
    args.iters = args.iters if args.iters is not None else (20 if cuda else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 0)
    if args.batch_sizes is not None and args.batch is not None:
        parser.error("give --batch or --batch-sizes, not both.")
    try:
        default = [args.batch or (16 if cuda else 1)]
        batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else default
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}.")
    args.batch_sizes = batches
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}.")
    precisions = args.precisions.split(",") if args.precisions else []
    allowed = OVS_PRECISIONS if cuda else ("bf16", "fp32")
    if any(p not in allowed for p in precisions):
        parser.error(f"--precisions on {args.device} must be a subset of {allowed}, got {args.precisions!r}.")
    args.ours = [f"ovs-{p}" for p in precisions] or ["ovs"] + (["ovs-bf16"] if not cuda and args.cpu_bf16 else [])
    if args.compile:
        args.ours += [f"{impl}+compile" for impl in args.ours]
    if min(args.iters, *batches, args.rounds) < 1 or args.warmup < 0:
        parser.error("--iters, --batch(-sizes) and --rounds must be >= 1, --warmup >= 0.")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        parser.error("--peak-tflops must be > 0.")
    if args.window_batch is not None and args.window_batch < 1:
        parser.error("--window-batch must be >= 1.")
    if args.image_size is not None:
        try:
            height, width = (int(v) for v in args.image_size.split(","))
        except ValueError:
            parser.error(f"--image-size must be H,W, got {args.image_size!r}.")
        args.image_size = (height, width)
    return args


def run_worker(args: argparse.Namespace, method: str, implementation: str, protocol: str,
               batches: list[int]) -> list[dict[str, Any]]:
    command = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--batch-sizes", ",".join(map(str, batches)),
               "--worker", method, implementation, protocol]
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    command += ["--compile-mode", args.compile_mode] + (["--window-batch", str(args.window_batch)]
                                                         if args.window_batch else [])
    command += ["--model", args.model] + (["--image-size", "{},{}".format(*args.image_size)] if args.image_size else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker {method}/{implementation}/{protocol} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def agreement_pct(a: list[list[int]], b: list[list[int]]) -> float:
    """Percentage of pixels with the same label in two label maps of the same image."""
    return 100 * float((torch.tensor(a) == torch.tensor(b)).float().mean())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.worker:
        method, implementation, protocol = args.worker
        print(json.dumps(measure(method, implementation, protocol, torch.device(args.device), args.batch_sizes,
                                 args.warmup, args.iters, args.peak_tflops, args.model, args.image_size,
                                 args.window_batch, args.compile_mode)))
        return []
    protocols = ["sclip", "gem"] if args.protocol == "both" else [args.protocol]
    rows = []
    for protocol in protocols:
        for method in args.methods.split(","):
            with_baseline = not args.no_baseline and BASELINES[protocol] == method
            references = REFERENCES[protocol] if with_baseline else ()
            results: dict[tuple[str, int], dict[str, Any]] = {}
            for _ in range(args.rounds):  # alternate implementations, keep each one's best round
                for impl in [*args.ours, *references]:
                    batches = args.batch_sizes if impl.startswith("ovs") else args.batch_sizes[:1]
                    for result in run_worker(args, method, impl, protocol, batches):
                        key = (impl, result["batch"])
                        if key not in results or result["images_per_s"] > results[key]["images_per_s"]:
                            results[key] = result
            for (impl, _), result in results.items():
                for reference_impl in references:
                    reference = results[(reference_impl, args.batch_sizes[0])]
                    if impl.startswith("ovs"):
                        result[f"agreement_pct_{reference_impl}"] = agreement_pct(result["labels"],
                                                                                  reference["labels"])
                        result[f"speedup_vs_{reference_impl}"] = result["images_per_s"] / reference["images_per_s"]
                fp32 = results.get(("ovs-fp32", result["batch"]))
                if fp32 is not None and impl != "ovs-fp32" and impl.startswith("ovs"):
                    result["agreement_pct_ovs-fp32"] = agreement_pct(result["labels"], fp32["labels"])
            for result in results.values():
                result.pop("labels")
                rows.append(result)
                print(format_row(result), flush=True)
            if args.output:  # after every method: a run stopped later keeps what it measured
                args.output.write_text(json.dumps(rows, indent=2))
    return rows


def format_row(row: dict[str, Any]) -> str:
    extra = ""
    for reference in REFERENCE_IMPLEMENTATIONS:
        if f"speedup_vs_{reference}" in row:
            extra += (f"  x{row[f'speedup_vs_{reference}']:.2f} vs {reference} "
                      f"(labels {row[f'agreement_pct_{reference}']:.2f} % equal)")
    if row.get("mfu_pct") is not None:
        extra += f"  MFU {row['mfu_pct']:.1f} %"
    return (f"{row['protocol']:5s} {row['method']:12s} {row['implementation']:17s} {row['device']:5s} "
            f"b{row['batch']:<4d} {row['images_per_s']:9.3f} img/s  peak {row['peak_memory_mb']:8.1f} MiB{extra}")


if __name__ == "__main__":
    main()

"""MaskInversion speed and memory: naive double back-propagation vs the gradient decomposition (spec §5.6).

Each (input size, mask count, route) runs in a fresh process on one random image with random rectangular masks and a
seed-0 random CLIP (``create_clip(model, None)``, no download): a one-step warm-up, then ``--repeats`` timed runs.
Reported: wall-clock seconds per image (mean of the repeats; precompute / iterations split), the process's CPU time
per image (all threads; less sensitive to other jobs on a shared machine) and the peak memory above the process's
state after loading the model (CPU: peak RSS, CUDA: ``max_memory_allocated``).

    python tools/benchmark_maskinversion.py --sizes 224 448 --masks 5 10 50 100 --modes naive decomposed
    python tools/benchmark_maskinversion.py --device cuda --sizes 224 448 --masks 100 --modes decomposed
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from typing import Any


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def random_masks(count: int, size: int, seed: int) -> Any:
    """``count`` random axis-aligned rectangles (5-60 % of each side) on a ``size x size`` image, ``float``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sides = (torch.rand(count, 2, generator=g) * 0.55 + 0.05) * size
    starts = torch.rand(count, 2, generator=g) * (size - sides)
    ys = torch.arange(size)[None, :, None]
    xs = torch.arange(size)[None, None, :]
    y0, x0 = starts[:, 0, None, None], starts[:, 1, None, None]
    y1, x1 = y0 + sides[:, 0, None, None], x0 + sides[:, 1, None, None]
    return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)).float()


def run_one(args: dict[str, Any], queue: Any) -> None:
    import torch

    from ovs.backbones import create_clip
    from ovs.methods.maskinversion import InversionConfig, invert

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = torch.device(args["device"])
    clip = create_clip(args["model"], None).to(device).eval()
    clip.requires_grad_(False)
    size, count = args["size"], args["masks"]
    image = torch.randint(0, 256, (3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    masks = random_masks(count, size, seed=2)
    config = InversionConfig(iterations=args["iterations"], image_size=size, grad_mode=args["mode"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    warm_up = InversionConfig(iterations=1, image_size=size, grad_mode=args["mode"])
    invert(clip, image.to(device), masks.to(device), warm_up)  # allocator, oneDNN primitives, kernels at these shapes
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_mib()
    times, splits = [], []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_start = usage.ru_utime + usage.ru_stime
    for _ in range(args["repeats"]):
        start = time.perf_counter()
        result = invert(clip, image.to(device), masks.to(device), config)
        sync()
        times.append(time.perf_counter() - start)
        splits.append(result.seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime + usage.ru_stime - cpu_start) / args["repeats"]
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else _peak_rss_mib() - base
    queue.put({
        "size": size, "masks": count, "mode": args["mode"], "seconds": sum(times) / len(times), "cpu_seconds": cpu,
        "precompute": sum(s["precompute"] for s in splits) / len(splits),
        "iterations": sum(s["iterations"] for s in splits) / len(splits), "peak_mib_above_model": peak,
        "threads": torch.get_num_threads(), "device": str(device),
    })


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    parser.add_argument("--masks", type=int, nargs="+", default=[5, 10, 50, 100])
    parser.add_argument("--modes", nargs="+", default=["naive", "decomposed"], choices=["naive", "decomposed"])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    context = mp.get_context("spawn")
    rows = []
    print("| input | masks | route | s / image | CPU s / image | precompute s | iterations s | peak MiB above model |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for count in args.masks:
            for mode in args.modes:
                queue = context.Queue()
                job = {"model": args.model, "size": size, "masks": count, "mode": mode, "device": args.device,
                       "iterations": args.iterations, "repeats": args.repeats, "threads": args.threads}
                process = context.Process(target=run_one, args=(job, queue))
                process.start()
                row = queue.get()
                process.join()
                rows.append(row)
                print(f"| {size}² | {count} | {mode} | {row['seconds']:.3f} | {row['cpu_seconds']:.1f} | "
                      f"{row['precompute']:.3f} | "
                      f"{row['iterations']:.3f} | {row['peak_mib_above_model']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""Cost of one native Mask2Former training step (``ovs.generators.native.Mask2FormerModule``): seconds per step and
peak memory, on random weights and random panoptic-style batches.

    python tools/benchmark_generator_training.py                               # CPU, the synthetic config's sizes
    python tools/benchmark_generator_training.py --device cuda --size 512 --batch 16 --paper-head

A step is forward + matching + losses (every decoder layer) + backward + gradient clipping + AdamW, as
``training_step`` runs it; ``--steps`` timed steps follow ``--warmup`` untimed ones, the median is reported. Default
sizes are ``configs/mask2former_r50_synthetic.yaml``'s (20 queries, width 64, 2 / 3 layers, 112 px, batch 8, 12544
points); ``--paper-head`` uses the R50 paper head (100 queries, width 256, 6 / 9 layers).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ovs.generators.native import Mask2FormerModule  # noqa: E402

SYNTHETIC_HEAD = dict(num_queries=20, hidden_dim=64, conv_dim=64, mask_dim=64, enc_layers=2, enc_ffn_dim=128,
                      dec_layers=3, nheads=4, dim_feedforward=128)


def random_batch(batch: int, size: int, classes: int, masks_per_image: int,
                 generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
    """``batch`` uint8 images ``[3, size, size]`` with ``masks_per_image`` random rectangles each."""
    images, masks, labels = [], [], []
    for _ in range(batch):
        images.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator))
        corners = torch.randint(0, size // 2, (masks_per_image, 2), generator=generator)
        grid = torch.arange(size)
        rows = (grid[None] >= corners[:, :1]) & (grid[None] < corners[:, :1] + size // 2)  # [N, size]
        cols = (grid[None] >= corners[:, 1:]) & (grid[None] < corners[:, 1:] + size // 2)
        masks.append(rows[:, :, None] & cols[:, None, :])  # [N, size, size]
        labels.append(torch.randint(0, classes, (masks_per_image,), generator=generator))
    return {"image": images, "masks": masks, "mask_labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=35)
    parser.add_argument("--masks-per-image", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--paper-head", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    head = {} if args.paper_head else SYNTHETIC_HEAD
    module = Mask2FormerModule(class_names=[[f"class {i}"] for i in range(args.classes)], **head).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        batch = random_batch(args.batch, args.size, args.classes, args.masks_per_image, generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = module.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 0.01)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({
        "device": str(device), "head": "paper" if args.paper_head else "synthetic", "size": args.size,
        "batch": args.batch, "threads": torch.get_num_threads(), "steps": args.steps,
        "median_s_per_step": round(statistics.median(times), 3), "images_per_s": round(
            args.batch / statistics.median(times), 2),
        "peak_mib": round(peak), "peak_kind": "max allocated" if device.type == "cuda" else "peak RSS",
    }))


if __name__ == "__main__":
    main()

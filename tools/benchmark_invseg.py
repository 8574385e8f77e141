"""Seconds per image and peak memory of InvSeg (docs/performance.md), on random weights (nothing downloaded).

    python tools/benchmark_invseg.py                                  # tiny model, CPU, the synthetic config's shapes
    python tools/benchmark_invseg.py --model sd21 --device cuda --precision bf16 --images 3
    python tools/benchmark_invseg.py --model sd21 --device cuda --steps 0     # the "Diffusion Baseline" cost

``--model tiny`` is the tiny random model of ``ovs.methods.invseg.tiny`` at 128 px (16 x 16 latent, 8 x 8 attention
captured); ``--model sd21`` builds Stable Diffusion 2.1-base's shapes (UNet 865 M parameters, 4-block VAE, 23-layer
1024-wide text encoder) with random weights at 512 px (64 x 64 latent, res-16 attention, 64 x 64 maps: the paper's
setting, invseg spec §4-§9). Each image: VAE of 2 views + the image, ``--steps`` Adam steps on 2 views, the t = 50
prediction; ``--classes`` categories (incl. "background") in one prompt; ``--warmup`` images (1) are not timed.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA (weights included); on CPU the process's peak resident set
(``ru_maxrss``, everything included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from ovs.methods.invseg.inversion import InvSegConfig, PromptInverter  # noqa: E402
from ovs.methods.invseg.prompt import build_prompts  # noqa: E402
from ovs.methods.invseg.tiny import build_tiny_diffusion  # noqa: E402

#: Stable Diffusion 2.1-base component shapes (its unet / vae / text_encoder config.json), random weights.
SD21_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "layers_per_block": 2,
    "in_channels": 4,
    "out_channels": 4,
    "sample_size": 64,
}
SD21_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "layers_per_block": 2,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD21_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
             "max_position_embeddings": 77, "hidden_act": "gelu"}
CLASS_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
               "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", "sd21"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"], help="UNet autocast (CUDA)")
    parser.add_argument("--images", type=int, default=4, help="timed images")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images first")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--classes", type=int, default=4, help="categories per image, background included")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--json", default=None, help="write the result row to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    with torch.device(device):
        if args.model == "sd21":
            model = build_tiny_diffusion(unet=SD21_UNET, vae=SD21_VAE, text_encoder=SD21_TEXT)
            config = InvSegConfig(steps=args.steps, precision=args.precision)
        else:
            model = build_tiny_diffusion()
            config = InvSegConfig(steps=args.steps, image_size=128, attention_resolutions=(8,),
                                  precision=args.precision)
    model.unet.to(device), model.vae.to(device), model.text_encoder.to(device)
    inverter = PromptInverter(model, config)
    names = CLASS_NAMES[: args.classes - 1] + ["background"]
    prompts = build_prompts(model.tokenizer, names)
    seconds = []
    for index in range(args.warmup + args.images):
        image = torch.randint(0, 256, (3, 375, 500), generator=torch.Generator().manual_seed(index)).float()
        if device.type == "cuda":
            torch.cuda.synchronize()
            if index == args.warmup:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        inverter.invert(image, prompts, torch.Generator().manual_seed(index))
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= args.warmup:
            seconds.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "model": args.model, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": args.precision if device.type == "cuda" else "fp32",
        "image_size": config.image_size, "steps": args.steps, "classes": args.classes, "images": args.images, "warmup": args.warmup,
        "seconds_per_image_median": statistics.median(seconds), "seconds_per_image_min": min(seconds),
        "peak_memory_mib": round(peak_mib, 1),
    }
    print(json.dumps(row, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()

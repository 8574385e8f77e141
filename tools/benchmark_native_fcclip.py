"""Cost of the native FC-CLIP / MAFT+ generator (``ovs.generators.native.NativeFCCLIP``) per image, and peak memory.

    python tools/benchmark_native_fcclip.py                          # CPU, FC-CLIP ConvNeXt-B, 3 images of 512 x 683
    python tools/benchmark_native_fcclip.py --clip convnext_large_d_320 --queries 250 --device cuda --images 20
    python tools/benchmark_native_fcclip.py --queries 100 --dtype bfloat16 --device cuda   # MAFT+-B size, bf16

Random weights (the cost does not depend on them): the paper-size head (6 deformable encoder layers, 9 masked-attention
decoder layers, hidden 256) on the open_clip ConvNeXt, the test vocabulary ADE-150 (FC-CLIP's 14 templates; encoded
once before timing), the reference's coco-pan test sizes (mapper short side 800, generator short side 800), one image
per forward. Timings are medians over ``--images`` after one warm-up image; peak memory is the process's peak RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
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

from ovs.data.class_names import load_class_names  # noqa: E402
from ovs.generators.native import NativeFCCLIP  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="convnext_base_w_320", help="open_clip ConvNeXt of the generator")
    parser.add_argument("--queries", type=int, default=250, help="250 FC-CLIP, 100 MAFT+")
    parser.add_argument("--images", type=int, default=3, help="timed images (after one warm-up)")
    parser.add_argument("--size", default="512x683", help="image size HxW before the test resize")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    generator = NativeFCCLIP(clip_model=args.clip, clip_pretrained=None, num_queries=args.queries)
    generator.to(device)
    generator.set_vocabulary(load_class_names("ade150"))
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8) for _ in range(args.images + 1)]
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    for index, image in enumerate(images):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            (proposals,) = generator({"image": [image], "meta": [{"height": height, "width": width}]})
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index > 0:
            times.append(1000 * (time.perf_counter() - start))
    if device.type == "cuda":
        memory = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS"
    print(json.dumps({
        "generator": f"NativeFCCLIP {args.clip} {args.queries} queries", "device": args.device, "dtype": args.dtype,
        "image": f"{height}x{width}", "masks": list(proposals.masks.shape), "logits": list(proposals.logits.shape),
        "ms_per_image_median": round(statistics.median(times)), "ms_per_image": [round(t) for t in times],
        "peak_memory": memory, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()

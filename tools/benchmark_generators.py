"""MaskCLIP++ inference cost: mask generator vs MaskCLIP++ mask classification, per image, and peak memory.

    python tools/benchmark_generators.py                      # CPU, random weights, 3 images of 512 x 683
    python tools/benchmark_generators.py --device cuda --images 20 --clip-batch 1,4
    python tools/benchmark_generators.py --backbone swin_t --only generator,native   # Mask2Former Swin-T
    python tools/benchmark_generators.py --device cuda --images 20 --only generator,native --dtype bfloat16

Each part runs in its own process so that its peak memory (CPU: peak RSS; CUDA: max allocated) is its own:

* ``generator``: Mask2Former R50 (the paper-size head: 100 queries, 6 deformable encoder layers, 9 masked-attention
  decoder layers, hidden 256; random weights, pure-PyTorch deformable attention) through ``Detectron2Generator``,
  short side 800 (detectron2's test resize), one image per forward as the reference;
* ``native``: the same Mask2Former R50 in plain PyTorch (``ovs.generators.native.NativeMask2Former``, no detectron2);
  ``--backbone swin_t`` / ``swin_l`` runs Mask2Former Swin-T (100 queries) / Swin-L 384 (200 queries) in both parts
  (maskformer2's ``D2SwinTransformer`` / ``ovs.generators.native.swin``);
* ``maskclippp``: ``MaskCLIPPP`` with a random ConvNeXt-B (``convnext_base_w_320``) and the pseudo-text PSM
  classifying Q = 100 soft masks per image against the 150 ADE classes (one template; text encoded once, not timed),
  CLIP short side 512; ``--clip-batch`` images per forward (the reference runs 1 per GPU).

Timings are medians over ``--images`` after one warm-up image; weights do not change the cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

MASK2FORMER_R50 = [
    "MODEL.META_ARCHITECTURE", "MaskFormer", "MODEL.BACKBONE.NAME", "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STEM_TYPE", "basic", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]", "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
    "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "255",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "133", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "256",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "256", "MODEL.SEM_SEG_HEAD.NORM", "GN",
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", "['res3', 'res4', 'res5']",
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "4", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "6",
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "MultiScaleMaskedTransformerDecoder",
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder",
    "MODEL.MASK_FORMER.DEEP_SUPERVISION", "True", "MODEL.MASK_FORMER.HIDDEN_DIM", "256",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "100", "MODEL.MASK_FORMER.NHEADS", "8",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "2048", "MODEL.MASK_FORMER.DEC_LAYERS", "10",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "32", "DATASETS.TRAIN", "('coco_2017_train_panoptic',)",
    "INPUT.FORMAT", "RGB", "INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1333",
]  # fmt: skip


BACKBONE_OPTS = {  # maskformer2_swin_tiny_bs16_50ep / maskformer2_swin_large_IN21k_384_bs16_100ep over the R50 config
    "R50": [],
    "swin_t": ["MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", "96",
               "MODEL.SWIN.DEPTHS", "[2, 2, 6, 2]", "MODEL.SWIN.NUM_HEADS", "[3, 6, 12, 24]",
               "MODEL.SWIN.WINDOW_SIZE", "7"],
    "swin_l": ["MODEL.BACKBONE.NAME", "D2SwinTransformer", "MODEL.SWIN.EMBED_DIM", "192",
               "MODEL.SWIN.DEPTHS", "[2, 2, 18, 2]", "MODEL.SWIN.NUM_HEADS", "[6, 12, 24, 48]",
               "MODEL.SWIN.WINDOW_SIZE", "12", "MODEL.SWIN.PRETRAIN_IMG_SIZE", "384",
               "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "200"],
}  # fmt: skip
QUERIES = {"R50": 100, "swin_t": 100, "swin_l": 200}


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def images(count: int, height: int, width: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator) for _ in range(count)]


def run_generator(args: argparse.Namespace, native: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    if native:
        from ovs.generators.native import NativeMask2Former

        generator = NativeMask2Former(backbone=args.backbone, num_queries=QUERIES[args.backbone]).to(args.device)
    else:
        from ovs.generators import Detectron2Generator

        generator = Detectron2Generator(opts=[*MASK2FORMER_R50, *BACKBONE_OPTS[args.backbone]]).to(args.device)
    times = []
    device_type = torch.device(args.device).type
    for index, image in enumerate(images(args.images + 1, args.height, args.width)):
        batch = {"image": [image], "meta": [{"height": args.height, "width": args.width}]}
        sync(args.device)
        start = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            generator(batch)
        sync(args.device)
        if index:
            times.append(time.perf_counter() - start)
    return {"ms_per_image": 1000 * statistics.median(times), "peak_mib": peak_memory_mib(args.device)}


def run_maskclippp(args: argparse.Namespace, batch_size: int) -> dict[str, float]:
    from ovs.backbones import build_text_classifier
    from ovs.data.class_names import load_class_names
    from ovs.methods.maskclippp import MaskCLIPPP

    torch.manual_seed(0)
    model = MaskCLIPPP("convnext_base_w_320", None, train_class_names="coco_panoptic", templates="single",
                       test_short_side=512).to(args.device).eval()
    classifier = build_text_classifier(model.clip, load_class_names("ade150"), ("a photo of a {}.",))
    masks = torch.rand(args.queries, args.height, args.width)
    batches = max(1, -(-args.images // batch_size))  # timed forwards, after one warm-up forward
    pictures = images(batch_size * (batches + 1), args.height, args.width)
    times = []
    with torch.inference_mode():
        for start in range(0, len(pictures), batch_size):
            chunk = pictures[start : start + batch_size]
            sync(args.device)
            began = time.perf_counter()
            model(chunk, [masks] * len(chunk), classifier)
            sync(args.device)
            if start:
                times.append((time.perf_counter() - began) / len(chunk))
    return {"ms_per_image": 1000 * statistics.median(times), "peak_mib": peak_memory_mib(args.device)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=3, help="timed images per part (after one warm-up)")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--backbone", default="R50", choices=sorted(BACKBONE_OPTS), help="Mask2Former backbone")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="generator parts: bfloat16 runs them under autocast (the reference runs fp32)")
    parser.add_argument("--clip-batch", default="1,4", help="MaskCLIP++ images per forward, comma-separated")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default=None, help="comma-separated parts to run: generator,native,maskclippp:B")
    args = parser.parse_args(argv)
    if args.part is not None:
        part, _, batch = args.part.partition(":")
        if part in ("generator", "native"):
            result = run_generator(args, native=part == "native")
        else:
            result = run_maskclippp(args, int(batch))
        print(json.dumps(result))
        return
    name = {"R50": "R50", "swin_t": "Swin-T", "swin_l": "Swin-L 384"}[args.backbone]
    rows = [(f"Mask2Former {name} generator (short side 800, batch 1)", "generator")]
    rows += [(f"Mask2Former {name} native, plain PyTorch (short side 800, batch 1)", "native")]
    rows += [(f"MaskCLIP++ ConvNeXt-B, {args.queries} masks (short side 512, batch {b})", f"maskclippp:{b}")
             for b in args.clip_batch.split(",")]
    if args.only is not None:
        rows = [row for row in rows if row[1] in args.only.split(",")]
    common = ["--device", args.device, "--images", str(args.images), "--height", str(args.height),
              "--width", str(args.width), "--queries", str(args.queries), "--backbone", args.backbone,
              "--dtype", args.dtype]
    print(f"| part ({args.height} x {args.width} images, {args.device}, generators {args.dtype}) | ms / image | "
          "peak memory (MiB) |")
    print("|---|---|---|")
    for label, part in rows:
        output = subprocess.run([sys.executable, __file__, *common, "--part", part], check=True,
                                capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(f"| {label} | {result['ms_per_image']:.0f} | {result['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()

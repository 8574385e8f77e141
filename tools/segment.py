"""Segment one image from the shell with a training-free method: a coloured overlay with a legend, optionally the
per-class scores.

    python tools/segment.py photo.jpg --vocabulary "sky, tree, person|man|woman" --method sclip --out photo_seg.png
    python tools/segment.py photo.jpg --vocabulary sclip_voc21 --background-index 0 --set prob_thd=0.1 \\
        --model ViT-B-16 --pretrained openai --save-logits

Classes are separated by commas, synonyms of one class by "|" (the class score is the max over its names); a
packaged class-name file (``sclip_voc21``) or a path to one also works. The default weights are the committed toy
CLIP (``checkpoints/ovs_toy_clip.pt``, offline, trained on synthetic shapes: expect toy results on photos); pass
``--model`` / ``--pretrained`` for real CLIP weights from the local cache or a file. ``--set key=value`` overrides
any inference setting (``size``, ``slide_crop``, ``logit_scale``, ``prob_thd`` ..., docs/methods.md).
``--save-logits`` writes ``{"logits" [K, H, W], "labels" [H, W], "class_names"}`` with ``torch.save``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont

from ovs.cli import REPO_ROOT
from ovs.data.class_names import available_class_names, load_class_names
from ovs.evaluation.visualize import make_palette, overlay
from ovs.methods import METHODS, create_segmenter
from ovs.methods.api import load_image

TOY_MODEL = "ovs-toy-vit"
TOY_CHECKPOINT = REPO_ROOT / "checkpoints" / "ovs_toy_clip.pt"
TOY_PROTOCOL: dict[str, Any] = {"templates": "single", "resize": "short", "size": 112, "slide_crop": 0}
"""The toy CLIP's protocol: 112 px (its training size), whole image, its caption template (docs/synthetic.md)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image file (PNG, JPEG ...; EXIF orientation applied)")
    parser.add_argument("--vocabulary", required=True,
                        help='classes "sky, tree, person|man", or a class-name file (packaged name or path)')
    parser.add_argument("--method", default="sclip", choices=sorted(METHODS), help="training-free method")
    parser.add_argument("--model", default=TOY_MODEL, help="open_clip model name (default: the toy CLIP)")
    parser.add_argument("--pretrained", default=None,
                        help="pretrained tag or checkpoint file; 'none' = random weights (default: the toy checkpoint "
                             "for the toy model, 'openai' otherwise)")
    parser.add_argument("--out", type=Path, default=None, help="overlay PNG (default: <image>_seg.png)")
    parser.add_argument("--save-logits", nargs="?", const="", default=None, metavar="PATH",
                        help="also save scores and labels (default path: the overlay's with .pt)")
    parser.add_argument("--background-index", type=int, default=None, help="class id of the background")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="inference setting override, repeatable (e.g. --set size=448 --set slide_crop=0)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f"--alpha must be in [0, 1], got {args.alpha}.")
    return args


def parse_vocabulary(text: str) -> list[list[str]]:
    """Classes split on ",", synonyms on "|"; a text without a comma that names a class-name file loads it."""
    if "," not in text and (Path(text).is_file() or text in available_class_names()):
        return load_class_names(text)
    return [[name.strip() for name in entry.split("|")] for entry in text.split(",")]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["size=448", "templates=single"]`` -> ``{"size": 448, "templates": "single"}`` (values parsed as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}.")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def draw_legend(image: Image.Image, names: list[str], palette: torch.Tensor) -> Image.Image:
    """Draw a legend (colour swatch + name per class) in the top-left corner, keeping the image size."""
    canvas = image.convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default()
    line = max(draw.textbbox((0, 0), "Ag", font=font)[3] + 4, 10)
    width = max(draw.textbbox((0, 0), name, font=font)[2] for name in names) + line + 10
    draw.rectangle((0, 0, width, line * len(names) + 6), fill=(0, 0, 0, 160))
    for index, name in enumerate(names):
        top = 3 + index * line
        colour = tuple(int(c) for c in palette[index])
        draw.rectangle((4, top + 1, 4 + line - 4, top + line - 3), fill=(*colour, 255))
        draw.text((line + 4, top), name, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(canvas, layer).convert("RGB")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    classes = parse_vocabulary(args.vocabulary)
    pretrained = args.pretrained
    if pretrained is None:
        pretrained = str(TOY_CHECKPOINT) if args.model == TOY_MODEL else "openai"
    pretrained = None if pretrained.lower() == "none" else pretrained
    protocol = {**(TOY_PROTOCOL if args.model == TOY_MODEL else {}), **parse_overrides(args.set)}
    pixels = load_image(args.image)  # uint8 [3, H, W]; errors name what is supported
    model = create_segmenter(args.method, args.model, pretrained, device=args.device, **protocol)
    model.set_vocabulary(classes, args.background_index)
    result = model.segment([pixels])[0]
    names = [synonyms[0] for synonyms in classes]
    palette = make_palette(len(names))
    blended = overlay(pixels.cpu(), result.labels.cpu(), palette, alpha=args.alpha)  # uint8 [3, H, W]
    picture = draw_legend(Image.fromarray(blended.permute(1, 2, 0).numpy()), names, palette)
    out = args.out or Path(args.image).with_name(f"{Path(args.image).stem}_seg.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({picture.width} x {picture.height}, {len(names)} classes, method {args.method})")
    if args.save_logits is not None:
        logits_path = Path(args.save_logits) if args.save_logits else out.with_suffix(".pt")
        torch.save({"logits": result.scores.cpu(), "labels": result.labels.cpu(), "class_names": names},
                   logits_path)
        print(f"wrote {logits_path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])

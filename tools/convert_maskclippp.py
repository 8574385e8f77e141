"""Convert a released MaskCLIP++ checkpoint (HVision-NKU/MaskCLIPpp, detectron2 ``.pth``) into an ovs checkpoint.

    python tools/convert_maskclippp.py --src maskclippp_coco-stuff_eva-clip-vit-l-14-336_wtext.pth \\
        --config maskclip++_eva02_l14_coco_stuff_wtext_maft_l_ens.yaml --out checkpoints/maskclippp_eva_l_wtext.ckpt
    python tools/eval.py --config maskclip++_eva02_l14_coco_stuff_wtext_maft_l_ens.yaml \\
        --ckpt_path checkpoints/maskclippp_eva_l_wtext.ckpt --datasets ade150,ade847,pc459,pc59,voc20

``--config`` is the ovs config of the same CLIP / PSM (a bare name resolves in ``configs/``); the model is built with
random weights only to check names and shapes, so no CLIP weights are needed. The file is read with
``torch.load(weights_only=True)``. Key mapping (reversed mask-attention log-scales, PSM names, EVA naming):
``ovs/methods/maskclippp/convert.py``. The output is a Lightning checkpoint (``state_dict`` + ``hyper_parameters``)
that ``tools/eval.py --ckpt_path`` and ``MaskCLIPPP.load_from_checkpoint`` load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from ovs.cli import resolve_config  # noqa: E402
from ovs.methods.maskclippp import MaskCLIPPP  # noqa: E402
from ovs.methods.maskclippp.convert import ConversionError, convert_state_dict  # noqa: E402

MODEL_ONLY = ("generator", "gamma", "panoptic_on", "instance_on", "object_mask_threshold", "overlap_threshold",
              "detections_per_image")


def model_arguments(config: Path) -> dict[str, Any]:
    """``model.init_args`` of an ovs MaskCLIP++ config, without the evaluation-only generator settings."""
    data = yaml.safe_load(config.read_text())
    model = (data or {}).get("model", {})
    if not str(model.get("class_path", "")).endswith("MaskCLIPPP"):
        raise SystemExit(f"error: {config} is not a MaskCLIP++ config (model.class_path must be MaskCLIPPP).")
    return {k: v for k, v in model.get("init_args", {}).items() if k not in MODEL_ONLY}


def convert(src: Path, config: Path, out: Path) -> Path:
    """Read ``src``, convert it for the model of ``config`` and write ``out``."""
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    source = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(source, dict):
        raise SystemExit(f"error: {src} holds no state dict ('model').")
    arguments = model_arguments(config)
    model = MaskCLIPPP(**{**arguments, "pretrained": None})  # names and shapes only
    try:
        state = convert_state_dict(source, model)
    except ConversionError as error:
        raise SystemExit(f"error: {src} -> {config.name}: {error}") from error
    hyper_parameters = dict(model.hparams) | {"pretrained": arguments.get("pretrained")}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "hyper_parameters": hyper_parameters,
                "pytorch-lightning_version": lightning.__version__, "maskclippp_source": str(src.name)}, out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="the authors' MaskCLIP++ .pth")
    parser.add_argument("--config", required=True, help="ovs MaskCLIP++ config (file or name in configs/)")
    parser.add_argument("--out", required=True, type=Path, help="output ovs checkpoint")
    args = parser.parse_args(argv)
    if not args.src.is_file():
        parser.error(f"--src {args.src} does not exist.")
    out = convert(args.src, resolve_config(args.config), args.out)
    print(f"Wrote {out}: python tools/eval.py --config {args.config} --ckpt_path {out} --datasets ade150,...")
    return out


if __name__ == "__main__":
    main()

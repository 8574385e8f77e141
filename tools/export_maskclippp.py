"""Export the CLIP of a MaskCLIP++ checkpoint as a full ovs CLIP checkpoint for the training-free methods.

    python tools/export_maskclippp.py --ckpt outputs/maskclip++_convnext_b/<run>/checkpoints/last.ckpt \\
        --out checkpoints/convnext_b_maskclippp.pt

The MaskCLIP++ checkpoint holds only the trained tensors and the hyper-parameters; the model is rebuilt from the
pretrained CLIP named there (offline weights needed, or ``--pretrained FILE``), the trained tensors are loaded and the
whole open_clip state dict (fine-tuned visual tower, and text tower when it was trained) is written as
``{"state_dict", "ovs_meta"}``. Load it with ``ovs.create_clip(model_name, pretrained=OUT)`` or set
``model.init_args.pretrained: OUT`` in any training-free config with the same ``model_name``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ovs.methods.maskclippp import MaskCLIPPP  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="MaskCLIP++ Lightning checkpoint (e.g. last.ckpt)")
    parser.add_argument("--out", required=True, type=Path, help="output file of the exported CLIP")
    parser.add_argument("--pretrained", default=None, help="override the base CLIP weights (tag or file)")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        parser.error(f"--ckpt {args.ckpt} does not exist.")
    overrides = {} if args.pretrained is None else {"pretrained": args.pretrained}
    model = MaskCLIPPP.load_from_checkpoint(args.ckpt, map_location="cpu", **overrides)
    out = model.export_clip(args.out)
    print(f"Wrote {out}: create_clip({model.hparams.model_name!r}, pretrained={str(out)!r})")
    return out


if __name__ == "__main__":
    main()

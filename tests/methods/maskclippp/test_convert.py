"""tools/convert_maskclippp.py on state dicts built in the authors' key layout (maskclippp.md §2.3)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from ovs.methods.maskclippp import MaskCLIPPP
from ovs.methods.maskclippp.convert import ConversionError, convert_state_dict
from tests.conftest import TINY_CONVNEXT, TINY_VIT

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
import convert_maskclippp  # noqa: E402


def randomized(model: MaskCLIPPP) -> MaskCLIPPP:
    """Give every trained tensor distinct random values (so a swapped or unconverted tensor is visible)."""
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return model


def write_config(path: Path, **init_args: object) -> Path:
    path.write_text(yaml.safe_dump({"model": {"class_path": "ovs.methods.maskclippp.MaskCLIPPP",
                                              "init_args": init_args}}))
    return path


def test_vit_linear_psm_checkpoint_round_trip(tmp_path: Path, tiny_vit_weights: Path) -> None:
    args = {"model_name": TINY_VIT, "pretrained": str(tiny_vit_weights), "train_class_names": "coco_panoptic",
            "templates": "fcclip14", "psm": "linear", "psm_width": 16, "mask_prior_depth": 3}
    reference = randomized(MaskCLIPPP(**args))
    visual = {k.removeprefix("clip.model.visual."): v for k, v in reference.state_dict().items()
              if k.startswith("clip.model.visual.")}
    scale = reference.encoder.mask_logit_scale.detach()  # [3 blocks front to back, 4 heads]
    authors = {f"visual_encoder.proxy.{k}": v.clone() for k, v in visual.items()}
    authors["visual_encoder.mask_logit_scale"] = torch.stack([scale[2], scale[1], scale[0]])  # last block first
    authors["psm.corr_proj_in.0.weight"] = reference.psm.expand.weight.detach().clone()
    authors["psm.corr_proj_in.0.bias"] = reference.psm.expand.bias.detach().clone()
    authors["psm.corr_proj_out.0.weight"] = reference.psm.reduce.weight.detach().clone()
    authors["psm.corr_proj_out.0.bias"] = reference.psm.reduce.bias.detach().clone()
    src = tmp_path / "maskclippp_vit.pth"
    torch.save({"model": authors, "iteration": 19999}, src)
    out = convert_maskclippp.main(["--src", str(src), "--config", str(write_config(tmp_path / "c.yaml", **args)),
                                   "--out", str(tmp_path / "converted.ckpt")])
    loaded = MaskCLIPPP.load_from_checkpoint(out, map_location="cpu")
    for name in reference.trained_state_keys():
        torch.testing.assert_close(loaded.state_dict()[name], reference.state_dict()[name], msg=name)
    torch.testing.assert_close(loaded.encoder.mask_logit_scale[0], authors["visual_encoder.mask_logit_scale"][2])


def test_pseudo_text_psm_names_and_errors(tmp_path: Path) -> None:
    model = randomized(MaskCLIPPP(TINY_CONVNEXT, train_class_names="coco_panoptic", templates="single", psm_heads=4))
    psm = {
        "psm.img_proj.weight": model.psm.img_proj.weight, "psm.img2text.in_proj_weight": model.psm.attention.in_proj_weight,
        "psm.img2text.in_proj_bias": model.psm.attention.in_proj_bias,
        "psm.img2text.out_proj.weight": model.psm.attention.out_proj.weight,
        "psm.img2text.out_proj.bias": model.psm.attention.out_proj.bias,
        "psm.ln_1.weight": model.psm.norm.weight, "psm.ln_1.bias": model.psm.norm.bias,
    }  # fmt: skip
    visual = {f"visual_encoder.proxy.{k.removeprefix('clip.model.visual.')}": v
              for k, v in model.state_dict().items() if k.startswith("clip.model.visual.")}
    converted = convert_state_dict({**visual, **psm}, model)
    assert converted["psm.attention.in_proj_weight"].data_ptr() != model.psm.attention.in_proj_weight.data_ptr()
    torch.testing.assert_close(converted["psm.norm.weight"], model.psm.norm.weight)
    torch.testing.assert_close(converted["psm.attention.out_proj.bias"], model.psm.attention.out_proj.bias)
    with pytest.raises(ConversionError, match="no ovs counterpart"):
        convert_state_dict({**visual, **psm, "sem_seg_head.predictor.weight": torch.zeros(1)}, model)
    with pytest.raises(ConversionError, match="lacks"):
        convert_state_dict(visual, model)
    bad = dict(psm, **{"psm.ln_1.weight": torch.zeros(3)})
    with pytest.raises(ConversionError, match="shape"):
        convert_state_dict({**visual, **bad}, model)

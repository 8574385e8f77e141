"""The generator configs of maskclippp.md §8.6: valid arguments and the spec's γ / thresholds / outputs."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from ovs.methods.maskclippp import MaskCLIPPP

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

# config -> (gamma, object threshold, overlap threshold, panoptic + instance on), from spec §8.6 / §8.1
EXPECTED = {
    "maskclip++_convnext_b_fcclip_b": (0.0, 0.0, 0.8, True),
    "maskclip++_convnext_l_fcclip_l": (0.0, 0.0, 0.8, True),
    "maskclip++_convnext_b_m2f_swin_t": (0.0, 0.8, 0.8, False),
    "maskclip++_convnext_b_m2f_swin_l": (0.0, 0.8, 0.8, False),
    "maskclip++_convnext_b_coco_stuff_maft_b": (0.0, None, None, False),
    "maskclip++_convnext_b_coco_stuff_maft_b_ens": (0.4, None, None, False),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l": (0.0, None, None, False),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l_ens": (0.1, None, None, False),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l_pan": (0.0, 0.2, 0.7, True),
    "maskclip++_eva02_l14_coco_stuff_wtext_maft_l_pan_ens": (0.1, 0.2, 0.7, True),
    "maskclip++_eva02_l14_coco_stuff_wtext_fcclip_l": (0.0, 0.0, 0.8, True),
    "maskclip++_eva02_l14_coco_stuff_wtext_fcclip_l_ens": (0.1, 0.0, 0.8, True),
}


def parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generator_config(name: str) -> None:
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    init = config["model"]["init_args"]
    assert set(init) <= parameters(MaskCLIPPP), set(init) - parameters(MaskCLIPPP)
    generator = init["generator"]
    module, _, cls_name = generator["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    assert set(generator["init_args"]) <= parameters(cls), set(generator["init_args"]) - parameters(cls)
    assert all(isinstance(item, str) for item in generator["init_args"].get("opts", [])), "opts must be strings"
    gamma, objectness, overlap, panoptic = EXPECTED[name]
    assert init["gamma"] == gamma
    assert init["panoptic_on"] is panoptic and init["instance_on"] is panoptic
    if objectness is not None:
        assert (init["object_mask_threshold"], init["overlap_threshold"]) == (objectness, overlap)
    assert config["data"]["init_args"]["task"] == ("panoptic" if panoptic else "semantic")
    # seen set = the generator's training set: COCO-Stuff for the semantic MAFT+ models, else COCO-Panoptic
    expected = "coco_stuff" if "maft_b" in name or name.endswith(("maft_l", "maft_l_ens")) else "coco_panoptic"
    assert generator["init_args"]["training_vocabulary"] == expected

"""Native Mask2Former R50 (ovs.generators.native) against maskformer2's model run by the detectron2 adapter on the
same random weights (issue 13: class and mask logits within 1e-4 on CPU fp32)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs.generators.native import NativeMask2Former
from tests.generators.conftest import assert_released_shapes, load_maskformer2_state, require_detectron2
from tests.generators.test_detectron2 import MASK2FORMER_R50_OPTS

NUM_CLASSES, QUERIES, DEC_LAYERS, ENC_LAYERS = 133, 7, 4, 2
OPTS = [*MASK2FORMER_R50_OPTS, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", str(ENC_LAYERS)]
NATIVE_SIZES = dict(num_classes=NUM_CLASSES, num_queries=QUERIES, dec_layers=DEC_LAYERS - 1, hidden_dim=32,
                    conv_dim=32, mask_dim=32, enc_layers=ENC_LAYERS, nheads=4, dim_feedforward=64,
                    min_size_test=64, max_size_test=128)


@pytest.fixture(scope="module")
def pair() -> tuple[object, NativeMask2Former]:
    """A random detectron2 Mask2Former and a native one holding its weights (through the key map)."""
    require_detectron2()
    from ovs.generators import Detectron2Generator

    torch.manual_seed(0)
    reference = Detectron2Generator(opts=OPTS)
    with torch.no_grad():  # FrozenBN starts as the identity: give it non-trivial statistics
        for name, buffer in reference.model.named_buffers():
            if name.endswith(("running_mean", "weight", "bias")) and "norm" in name:
                buffer.add_(0.1 * torch.randn_like(buffer))
            elif name.endswith("running_var"):
                buffer.mul_(torch.rand_like(buffer) + 0.5)
    native = NativeMask2Former(**NATIVE_SIZES)
    load_maskformer2_state(native, reference.model)
    return reference, native


def test_every_layer_matches_maskformer2(pair) -> None:  # type: ignore[no-untyped-def]
    reference, native = pair
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        expected = reference.model.sem_seg_head(reference.model.backbone(images))
        actual = native.model(images)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(actual[key], expected[key], atol=1e-4, rtol=0)
    assert len(actual["aux_outputs"]) == len(expected["aux_outputs"]) == DEC_LAYERS - 1
    for got, want in zip(actual["aux_outputs"], expected["aux_outputs"]):
        for key in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=0)
    assert float(expected["pred_masks"].std()) > 1e-3  # the comparison is not between constants


def test_generator_matches_the_detectron2_adapter(pair) -> None:  # type: ignore[no-untyped-def]
    """Same resize (45 x 70 -> 64 x 100), normalisation, padding (64 x 128) and mask post-processing."""
    reference, native = pair
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8)
    batch = {"image": [image], "meta": [{"height": 45, "width": 70}]}
    (want,) = reference(batch)
    (got,) = native(batch)
    assert got.masks.shape == (QUERIES, 45, 70) and got.logits is not None
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.masks, want.masks, atol=1e-4, rtol=0)
    assert got.logits_vocabulary == want.logits_vocabulary and native.training_vocabulary[0][0] == "person"


def test_released_pkl_layout_loads_into_the_native_model(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A detectron2-layout ``model_final.pkl`` of numpy arrays (with the criterion buffer) loads by path."""
    reference, native = pair
    state = {k: v.numpy().copy() for k, v in reference.model.state_dict().items()}
    state["criterion.empty_weight"] = np.ones(NUM_CLASSES + 1, dtype=np.float32)
    path = tmp_path / "model_final_test.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": state, "__author__": "test", "iteration": np.int64(5)}, handle)
    loaded = NativeMask2Former(weights=str(path), **NATIVE_SIZES)
    for key, value in native.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_paper_size_config_has_the_shapes_of_maskformer2_r50() -> None:
    """The native config's generator (configs/maskclip++_convnext_b_m2f_r50_native.yaml) has exactly the tensors
    of maskformer2's COCO-panoptic R50 model (6 encoder layers, FFN 1024, 9 + 1 decoder layers, 100 queries)."""
    require_detectron2()
    import yaml

    from ovs.generators import Detectron2Generator

    config = Path(__file__).resolve().parents[2] / "configs" / "maskclip++_convnext_b_m2f_r50_native.yaml"
    generator = yaml.safe_load(config.read_text())["model"]["init_args"]["generator"]
    assert generator["class_path"] == "ovs.generators.native.NativeMask2Former"
    native = NativeMask2Former(**{k: v for k, v in generator["init_args"].items() if k != "weights"})
    paper = [  # maskformer2_R50_bs16_50ep.yaml (COCO panoptic) head sizes over the tiny test config
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "256", "MODEL.SEM_SEG_HEAD.MASK_DIM", "256",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "6", "MODEL.MASK_FORMER.HIDDEN_DIM", "256",
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "100", "MODEL.MASK_FORMER.NHEADS", "8",
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "2048", "MODEL.MASK_FORMER.DEC_LAYERS", "10",
    ]  # fmt: skip
    reference = Detectron2Generator(opts=[*MASK2FORMER_R50_OPTS, *paper])
    assert_released_shapes(native, reference.model)

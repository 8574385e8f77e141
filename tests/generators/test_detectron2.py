"""The detectron2 adapter on a randomly initialised Mask2Former R50 built from a config in code (no weights)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.generators.conftest import maskclippp_on_fake_ade150, require_detectron2

NUM_CLASSES = 133
QUERIES = 7

# Mask2Former R50 (configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml) with a narrow, shallow head so
# that the CPU test stays fast; the backbone is the full ResNet-50.
MASK2FORMER_R50_OPTS = [
    "MODEL.META_ARCHITECTURE", "MaskFormer",
    "MODEL.BACKBONE.NAME", "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_TYPE", "basic",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
    "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
    "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
    "MODEL.SEM_SEG_HEAD.NAME", "MaskFormerHead",
    "MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "255",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.NORM", "GN",
    "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder",
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    "MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", "['res3', 'res4', 'res5']",
    "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "4",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "MultiScaleMaskedTransformerDecoder",
    "MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE", "multi_scale_pixel_decoder",
    "MODEL.MASK_FORMER.DEEP_SUPERVISION", "True",
    "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", str(QUERIES),
    "MODEL.MASK_FORMER.NHEADS", "4",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4",
    "MODEL.MASK_FORMER.SIZE_DIVISIBILITY", "32",
    "MODEL.MASK_FORMER.TEST.SEMANTIC_ON", "True",
    "MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True",
    "MODEL.MASK_FORMER.TEST.INSTANCE_ON", "True",
    "DATASETS.TRAIN", "('coco_2017_train_panoptic',)",
    "INPUT.FORMAT", "RGB",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
]  # fmt: skip


@pytest.fixture(scope="module")
def generator():  # type: ignore[no-untyped-def]
    require_detectron2()
    from ovs.generators import Detectron2Generator

    torch.manual_seed(0)
    return Detectron2Generator(opts=MASK2FORMER_R50_OPTS)


def test_mask2former_r50_masks_and_logits_on_a_non_square_image(generator) -> None:  # type: ignore[no-untyped-def]
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8)
    batch = {"image": [image], "meta": [{"height": 45, "width": 70}]}
    called = {"inference": 0}
    original = type(generator.model).semantic_inference
    type(generator.model).semantic_inference = lambda *a, **k: called.__setitem__("inference", 1)  # type: ignore[method-assign]
    try:
        (proposals,) = generator(batch)
    finally:
        type(generator.model).semantic_inference = original  # type: ignore[method-assign]
    assert called["inference"] == 0  # the model's own post-processing never ran
    assert proposals.masks.shape == (QUERIES, 45, 70)
    assert proposals.logits is not None and proposals.logits.shape == (QUERIES, NUM_CLASSES + 1)
    assert float(proposals.masks.min()) >= 0 and float(proposals.masks.max()) <= 1
    assert proposals.logits_vocabulary is not None and len(proposals.logits_vocabulary) == NUM_CLASSES
    assert generator.training_vocabulary[0][0] == "person"


def test_masks_follow_the_resize_pad_crop_protocol(generator) -> None:  # type: ignore[no-untyped-def]
    """Recompute the masks from the predictor's raw output: 45 x 70 -> short side 64 -> 64 x 100 (70 x 64 / 45 = 99.6, rounded; max 128), padded
    to 64 x 128 (divisibility 32), masks at stride 4."""
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8)
    raw = {}
    handle = generator.head.register_forward_hook(lambda m, i, o: raw.setdefault("out", o))
    try:
        (proposals,) = generator({"image": [image], "meta": [{"height": 45, "width": 70}]})
    finally:
        handle.remove()
    pred = raw["out"]["pred_masks"][0]
    assert tuple(pred.shape[-2:]) == (16, 32)
    expected = torch.nn.functional.interpolate(pred.sigmoid()[None], size=(64, 128), mode="bilinear")
    expected = torch.nn.functional.interpolate(expected[..., :64, :100], size=(45, 70), mode="bilinear")[0]
    torch.testing.assert_close(proposals.masks, expected)
    torch.testing.assert_close(proposals.logits, raw["out"]["pred_logits"][0])


def test_weights_round_trip_and_unsafe_pickles_are_refused(generator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ovs.generators.detectron2_adapter import load_weights_file

    state = {k: v.numpy().copy() for k, v in generator.model.state_dict().items()}
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": state, "__author__": "test"}, handle)
    loaded = load_weights_file(path)
    assert loaded["matching_heuristics"] is True
    key = "sem_seg_head.predictor.class_embed.weight"
    np.testing.assert_array_equal(loaded["model"][key], state[key])

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": subprocess.Popen}))
    with pytest.raises(pickle.UnpicklingError, match="Refusing"):
        load_weights_file(evil)


def test_import_ovs_does_not_import_detectron2() -> None:
    code = "import sys, ovs, ovs.generators, ovs.methods.maskclippp; print('detectron2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_closed_vocabulary_mask2former_through_maskclippp(generator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Mask2Former's 133 COCO classes reach the 150 ADE classes through the look-up table; γ-fusion applies on the
    64 ADE classes seen in COCO-Panoptic (paper §4.1: 64 seen / 86 unseen) and every metric is produced."""
    model, metrics = maskclippp_on_fake_ade150(generator, tmp_path)
    assert int(model.generator_seen.sum()) == 64
    (lut,) = model._luts.values()
    assert lut.shape == (NUM_CLASSES + 1,) and int(lut[-1]) == 150  # void -> the dropped extra slot
    assert int(lut[0]) == 12  # COCO "person" -> ADE "person" (index 12)
    for key in ("test/mIoU", "test/mIoU_seen", "test/PQ", "test/AP"):
        assert 0.0 <= float(metrics[key]) <= 100.0, key

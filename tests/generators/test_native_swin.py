"""Native Swin backbone (ovs.generators.native.swin) against maskformer2's ``D2SwinTransformer`` and the native
Mask2Former Swin against maskformer2's ``MaskFormer`` on the same random weights (issue 13 item 1; maskclippp.md
§8.6 rows m2f-swin-t / m2f-swin-l), the released-checkpoint layout and the Swin helpers against brute force."""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ovs.generators.native import NativeMask2Former, detectron2_to_native, swin
from ovs.generators.native.backbones import BACKBONES
from ovs.generators.native.swin import SwinBackbone, relative_position_index, shifted_window_mask
from tests.generators.conftest import assert_released_shapes, load_maskformer2_state, require_detectron2
from tests.generators.test_detectron2 import MASK2FORMER_R50_OPTS

EMBED, DEPTHS, HEADS, WINDOW = 32, (2, 2, 2, 2), (1, 2, 4, 8), 7
TINY_SWIN = "swin_tiny_test"
SWIN_OPTS = [
    "MODEL.BACKBONE.NAME", "D2SwinTransformer",
    "MODEL.SWIN.EMBED_DIM", str(EMBED),
    "MODEL.SWIN.DEPTHS", str(list(DEPTHS)),
    "MODEL.SWIN.NUM_HEADS", str(list(HEADS)),
    "MODEL.SWIN.WINDOW_SIZE", str(WINDOW),
]  # fmt: skip
NUM_CLASSES, QUERIES, DEC_LAYERS, ENC_LAYERS = 133, 7, 4, 2
OPTS = [*MASK2FORMER_R50_OPTS, *SWIN_OPTS, "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", str(ENC_LAYERS)]
NATIVE_SIZES = dict(num_classes=NUM_CLASSES, num_queries=QUERIES, dec_layers=DEC_LAYERS - 1, hidden_dim=32,
                    conv_dim=32, mask_dim=32, enc_layers=ENC_LAYERS, nheads=4, dim_feedforward=64,
                    min_size_test=64, max_size_test=128, backbone=TINY_SWIN)
IMAGE_SIZE = (203, 262)
"""Not a multiple of the patch (4), of 32 or of window · 32: patch-embed, window and patch-merging padding all act
(res2 51 x 66 -> windows 56 x 70; res5 7 x 9 -> 7 x 14, so the shifted windows of every stage straddle regions)."""


@pytest.fixture
def tiny_swin_registered() -> Iterator[None]:
    """The tiny Swin under a backbone name, so ``Mask2Former(backbone=...)`` builds it like ``swin_t``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES, TINY_SWIN, partial(SwinBackbone, EMBED, DEPTHS, HEADS, WINDOW))
        yield


def randomise(module: torch.nn.Module) -> None:
    """Non-trivial values everywhere: LayerNorms away from (1, 0), relative position biases of order 1 (their
    initialisation, std 0.02, would hide a wrong bias index)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_(0.0, 1.0)
            else:
                parameter.add_(0.1 * torch.randn_like(parameter))


@pytest.fixture(scope="module")
def backbones() -> tuple[torch.nn.Module, SwinBackbone]:
    """maskformer2's Swin (tiny sizes) and the native one holding its weights through the key map."""
    require_detectron2()
    from mask2former.modeling.backbone.swin import SwinTransformer

    torch.manual_seed(0)
    reference = SwinTransformer(embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS), window_size=WINDOW)
    reference.train(False)  # its train() returns None
    randomise(reference)
    state = {f"backbone.{key}": value for key, value in reference.state_dict().items()}
    renamed, unmatched = detectron2_to_native(state)
    assert unmatched == []
    native = SwinBackbone(EMBED, DEPTHS, HEADS, WINDOW).eval()
    result = native.load_state_dict({key.removeprefix("backbone."): v for key, v in renamed.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return reference, native


def test_swin_equals_maskformer2_on_every_output(backbones) -> None:  # type: ignore[no-untyped-def]
    reference, native = backbones
    torch.manual_seed(1)
    images = torch.randn(2, 3, *IMAGE_SIZE)
    with torch.inference_mode():
        expected, actual = reference(images), native(images)
    sizes = {"res2": (51, 66), "res3": (26, 33), "res4": (13, 17), "res5": (7, 9)}
    assert list(actual) == list(sizes)
    for name, (height, width) in sizes.items():
        channels = native.out_channels[name]
        assert actual[name].shape == (2, channels, height, width) and channels == EMBED * 2 ** (int(name[-1]) - 2)
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=0, msg=name)
        assert float(expected[name].std()) > 0.1  # not a comparison between constants


def test_the_parity_test_sees_shifts_masks_and_the_bias_index(backbones) -> None:  # type: ignore[no-untyped-def]
    """Wrong Swins that a weaker parity test would let through: no shift anywhere, shifted windows without the region
    mask, the bias index of ``p_j - p_i`` instead of ``p_i - p_j``, no relative position bias."""
    reference, native = backbones
    torch.manual_seed(1)
    images = torch.randn(1, 3, *IMAGE_SIZE)
    blocks = [block for layer in native.layers for block in layer.blocks]
    with torch.no_grad():
        expected = reference(images)["res5"]

        def gap() -> float:
            return float((native(images)["res5"] - expected).abs().max())

        assert gap() <= 1e-5
        shifts = [block.shift for block in blocks]
        for block in blocks:
            block.shift = 0
        no_shift = gap()
        for block, shift in zip(blocks, shifts):
            block.shift = shift
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(swin, "shifted_window_mask",
                           lambda h, w, window, shift, device: torch.zeros(h * w // window**2, window**2, window**2))
            no_mask = gap()
        for block in blocks:
            block.attn.relative_position_index = block.attn.relative_position_index.T
        transposed = gap()
        for block in blocks:
            block.attn.relative_position_index = block.attn.relative_position_index.T
        tables = [block.attn.relative_position_bias_table.clone() for block in blocks]
        for block in blocks:
            block.attn.relative_position_bias_table.zero_()
        no_bias = gap()
        for block, table in zip(blocks, tables):
            block.attn.relative_position_bias_table.copy_(table)
        assert gap() <= 1e-5
    assert min(no_shift, no_mask, transposed, no_bias) > 1e-2, (no_shift, no_mask, transposed, no_bias)


def test_relative_position_index_and_shift_mask_by_brute_force() -> None:
    """Index: the bias-table row of each token pair from its offset, pair by pair. Mask: shift a map of region ids as
    the paper draws it (cyclic shift of the padded map by ``-shift``; tokens that wrapped around belong to other
    regions), then compare the ids of every pair of tokens in each window."""
    window, shift, height, width = 4, 2, 8, 12
    index = relative_position_index(window)
    coords = list(itertools.product(range(window), range(window)))
    for (i, (yi, xi)), (j, (yj, xj)) in itertools.product(enumerate(coords), repeat=2):
        assert int(index[i, j]) == (yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)

    # shifted row r holds original row (r + shift) mod height: rows / columns that wrapped came from the far side
    wrapped_row = [int(r + shift >= height) for r in range(height)]
    wrapped_col = [int(c + shift >= width) for c in range(width)]
    mask = shifted_window_mask(height, width, window, shift, torch.device("cpu"))
    assert mask.shape == ((height // window) * (width // window), window * window, window * window)
    for wy, wx in itertools.product(range(height // window), range(width // window)):
        tokens = [(wy * window + dy, wx * window + dx) for dy, dx in itertools.product(range(window), repeat=2)]
        for (i, (ri, ci)), (j, (rj, cj)) in itertools.product(enumerate(tokens), repeat=2):
            same = wrapped_row[ri] == wrapped_row[rj] and wrapped_col[ci] == wrapped_col[cj]
            assert float(mask[wy * (width // window) + wx, i, j]) == (0.0 if same else -100.0)


def test_both_attention_kernels_equal_the_formula() -> None:
    """The CPU path (matmuls + softmax) and the fused path (``scaled_dot_product_attention``, used off the CPU) both
    equal ``softmax(q kᵀ / √d + bias) v`` computed in float64, with the bias broadcast over the images."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 9, 8).unbind(0)  # [B, nW·h, N, d]
    bias = 3 * torch.randn(5, 9, 9)  # [nW·h, N, N]
    scores = q.double() @ k.double().transpose(-2, -1) / 8**0.5 + bias.double()
    expected = (scores.softmax(-1) @ v.double()).float()
    for fused in (False, True):
        torch.testing.assert_close(swin.window_attention(q, k, v, bias, fused), expected, atol=1e-5, rtol=0)


def test_drop_path_is_training_only_and_linear_in_depth() -> None:
    torch.manual_seed(0)
    model = SwinBackbone(16, (1, 1, 2, 2), (1, 1, 2, 2), 3, drop_path_rate=0.6)
    rates = [block.drop_path.p for layer in model.layers for block in layer.blocks]
    assert rates == pytest.approx([0.6 * i / 5 for i in range(6)])
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        first, second = model(images)["res5"], model(images)["res5"]
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        model.train()
        trained = model(images)["res5"]
    differs = (trained - first).abs().flatten(1).amax(dim=1) > 1e-6  # [8]: per image
    assert bool(differs.any())


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[object, NativeMask2Former]]:
    """A random maskformer2 MaskFormer with a tiny ``D2SwinTransformer``; the native Mask2Former with its weights."""
    require_detectron2()
    from ovs.generators import Detectron2Generator

    torch.manual_seed(0)
    reference = Detectron2Generator(opts=OPTS)
    randomise(reference.model.backbone)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKBONES, TINY_SWIN, partial(SwinBackbone, EMBED, DEPTHS, HEADS, WINDOW))
        native = NativeMask2Former(**NATIVE_SIZES)
    load_maskformer2_state(native, reference.model)
    yield reference, native


def test_native_mask2former_swin_equals_maskformer2(pair) -> None:  # type: ignore[no-untyped-def]
    reference, native = pair
    torch.manual_seed(1)
    images = torch.randn(2, 3, 96, 160)  # res2 24 x 40 (windows on 28 x 42), res5 3 x 5 (one 7 x 7 window)
    with torch.inference_mode():
        expected = reference.model.sem_seg_head(reference.model.backbone(images))
        actual = native.model(images)
    for got, want in zip([actual, *actual["aux_outputs"]], [expected, *expected["aux_outputs"]]):
        for key in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=0)
    assert len(actual["aux_outputs"]) == DEC_LAYERS - 1
    assert float(expected["pred_masks"].std()) > 1e-3


def test_released_swin_pkl_layout_loads(  # type: ignore[no-untyped-def]
    pair, tmp_path: Path, tiny_swin_registered: None
) -> None:
    """maskformer2's ``state_dict()`` as a ``model_final.pkl`` of numpy arrays: it carries every block's
    ``relative_position_index`` (recomputed natively) and the criterion buffer; everything else lands exactly."""
    reference, native = pair
    state = {k: v.numpy().copy() for k, v in reference.model.state_dict().items()}
    derived = [key for key in state if key.endswith("relative_position_index")]
    assert len(derived) == sum(DEPTHS)
    state["criterion.empty_weight"] = np.ones(NUM_CLASSES + 1, dtype=np.float32)
    path = tmp_path / "model_final_swin.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": state, "__author__": "test", "iteration": np.int64(5)}, handle)
    loaded = NativeMask2Former(weights=str(path), **NATIVE_SIZES)
    expected = native.model.state_dict()
    assert set(loaded.model.state_dict()) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, atol=0, rtol=0, msg=key)


def test_a_wrong_window_checkpoint_names_the_file_and_the_key(tmp_path: Path, tiny_swin_registered: None) -> None:
    """A window-12 bias table in a window-7 model (a Swin-L 384 checkpoint given to a Swin-T config) is refused."""
    model = NativeMask2Former(**NATIVE_SIZES)
    state = model.model.state_dict()
    key = "backbone.layers.0.blocks.1.attn.relative_position_bias_table"
    state[key] = torch.zeros((2 * 12 - 1) ** 2, HEADS[0])
    path = tmp_path / "model_final_wrong_window.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="model_final_wrong_window.pth") as error:
        NativeMask2Former(weights=str(path), **NATIVE_SIZES)
    assert key in str(error.value) and "(529, 1) vs (169, 1)" in str(error.value)


@pytest.mark.parametrize("name", ["swin_t", "swin_l"])
def test_paper_size_configs_have_the_shapes_of_maskformer2_swin(name: str) -> None:
    """The native generator of configs/maskclip++_convnext_b_m2f_<name>.yaml has exactly the tensors of maskformer2's
    COCO-panoptic Swin model of the released config (the native one on the meta device: shapes only)."""
    require_detectron2()
    from detectron2.modeling import META_ARCH_REGISTRY

    from ovs.generators import Detectron2Generator
    from ovs.generators.detectron2_adapter import DEFAULT_ADD_CONFIG

    config = Path(__file__).resolve().parents[2] / "configs" / f"maskclip++_convnext_b_m2f_{name}.yaml"
    generator = yaml.safe_load(config.read_text())["model"]["init_args"]["generator"]
    assert generator["class_path"] == "ovs.generators.native.NativeMask2Former"
    released = {  # maskformer2_swin_tiny_bs16_50ep.yaml / maskformer2_swin_large_IN21k_384_bs16_100ep.yaml
        "swin_t": ["MODEL.SWIN.EMBED_DIM", "96", "MODEL.SWIN.DEPTHS", "[2, 2, 6, 2]",
                   "MODEL.SWIN.NUM_HEADS", "[3, 6, 12, 24]", "MODEL.SWIN.WINDOW_SIZE", "7",
                   "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "100"],
        "swin_l": ["MODEL.SWIN.EMBED_DIM", "192", "MODEL.SWIN.DEPTHS", "[2, 2, 18, 2]",
                   "MODEL.SWIN.NUM_HEADS", "[6, 12, 24, 48]", "MODEL.SWIN.WINDOW_SIZE", "12",
                   "MODEL.SWIN.PRETRAIN_IMG_SIZE", "384", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "200"],
    }[name]
    heads = [
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "256", "MODEL.SEM_SEG_HEAD.MASK_DIM", "256",
        "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "6", "MODEL.MASK_FORMER.HIDDEN_DIM", "256",
        "MODEL.MASK_FORMER.NHEADS", "8", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "2048",
        "MODEL.MASK_FORMER.DEC_LAYERS", "10", "MODEL.BACKBONE.NAME", "D2SwinTransformer",
    ]  # fmt: skip
    from ovs.generators import d2compat

    d2compat.import_mask2former()
    cfg = Detectron2Generator._build_config(None, DEFAULT_ADD_CONFIG, [*MASK2FORMER_R50_OPTS, *heads, *released])
    reference = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)  # its Swin calls .item(): not on meta
    with torch.device("meta"):
        native = NativeMask2Former(**{k: v for k, v in generator["init_args"].items() if k != "weights"})
    assert generator["init_args"]["backbone"] == name
    assert_released_shapes(native, reference)


def test_training_keeps_the_relative_position_bias_free_of_weight_decay(tiny_swin_registered: None) -> None:
    """As Mask2Former's ``build_optimizer`` (``WEIGHT_DECAY_EMBED`` 0 for ``relative_position_bias_table``): the
    bias tables join the backbone's no-decay group, the Swin linear layers keep the decay."""
    from lightning import Trainer

    from ovs.generators.native import Mask2FormerModule

    sizes = {k: v for k, v in NATIVE_SIZES.items() if k not in ("num_classes", "min_size_test", "max_size_test")}
    module = Mask2FormerModule(class_names=[["a"], ["b"]], **sizes)
    module.trainer = Trainer(max_steps=10, logger=False, enable_checkpointing=False,  # type: ignore[assignment]
                             enable_progress_bar=False)
    groups = {g["name"]: g for g in module.configure_optimizers()["optimizer"].param_groups}
    no_decay = {id(p) for p in groups["backbone_no_decay"]["params"]}
    decay = {id(p) for p in groups["backbone"]["params"]}
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.05
    tables = [p for n, p in module.model.backbone.named_parameters() if n.endswith("relative_position_bias_table")]
    assert len(tables) == sum(DEPTHS) and all(id(p) in no_decay for p in tables)
    block = module.model.backbone.layers[0].blocks[0]
    assert id(block.attn.qkv.weight) in decay and id(block.norm1.weight) in no_decay

"""Native Mask2Former without detectron2: deformable attention against a brute-force bilinear sampling, the
detectron2 key map on a state dict written in detectron2's layout (``.pkl`` of numpy arrays and ``.pth``), refusal of
malicious pickles and the error naming the file and the unmatched keys."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs.generators.native import NativeMask2Former, ms_deform_attn, read_checkpoint
from ovs.generators.native.mask2former import resize_shortest_edge
from tests.generators.conftest import maskclippp_on_fake_ade150

TINY = dict(num_classes=5, num_queries=3, dec_layers=2, hidden_dim=32, conv_dim=32, mask_dim=32, enc_layers=1,
            nheads=4, dim_feedforward=16, training_vocabulary=[[f"class{i}"] for i in range(5)],
            min_size_test=64, max_size_test=96)


def bilinear(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Value of ``image`` ``[D, H, W]`` at normalised ``(x, y)``: pixel centres at ``(i + 0.5) / W``, zeros outside."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    total = torch.zeros(image.shape[0], dtype=torch.float64)
    for xi, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
        for yi, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
            if 0 <= xi < width and 0 <= yi < height:
                total += wx * wy * image[:, yi, xi].double()
    return total


def test_deformable_attention_equals_brute_force_bilinear_sampling() -> None:
    torch.manual_seed(0)
    batch, heads, dim, queries, points = 2, 2, 3, 4, 3
    shapes = [(3, 5), (2, 2)]
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2) * 1.4 - 0.2  # some points fall outside
    weights = torch.rand(batch, queries, heads, len(shapes), points)
    out = ms_deform_attn(value, shapes, locations, weights)
    assert out.shape == (batch, queries, heads * dim)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                expected = torch.zeros(dim, dtype=torch.float64)
                for level, (h, w) in enumerate(shapes):
                    image = value[b, starts[level] : starts[level] + h * w, m].T.reshape(dim, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, level, p].tolist()
                        expected += weights[b, q, m, level, p].double() * bilinear(image, x, y)
                torch.testing.assert_close(out[b, q, m * dim : (m + 1) * dim].double(), expected, atol=1e-5, rtol=0)


def native_to_detectron2_name(key: str) -> str:
    """detectron2 / maskformer2 parameter names of a native key, written independently of the library's key map."""
    key = re.sub(r"^backbone\.conv1\.", "backbone.stem.conv1.", key)
    key = re.sub(r"^backbone\.bn1\.", "backbone.stem.conv1.norm.", key)
    key = re.sub(r"^backbone\.layer(\d)\.", lambda m: f"backbone.res{int(m.group(1)) + 1}.", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    key = key.replace("pixel_decoder.layers.", "pixel_decoder.transformer.encoder.layers.")
    key = key.replace("pixel_decoder.level_embed", "pixel_decoder.transformer.level_embed")
    key = key.replace("pixel_decoder.lateral_convs.0.0.", "pixel_decoder.adapter_1.")
    key = key.replace("pixel_decoder.lateral_convs.0.1.", "pixel_decoder.adapter_1.norm.")
    key = key.replace("pixel_decoder.output_convs.0.0.", "pixel_decoder.layer_1.")
    key = key.replace("pixel_decoder.output_convs.0.1.", "pixel_decoder.layer_1.norm.")
    key = re.sub(r"^pixel_decoder\.", "sem_seg_head.pixel_decoder.", key)
    key = re.sub(r"^decoder\.cross_attention\.(\d+)\.attn\.", r"decoder.transformer_cross_attention_layers.\1.multihead_attn.", key)
    key = re.sub(r"^decoder\.cross_attention\.", "decoder.transformer_cross_attention_layers.", key)
    key = re.sub(r"^decoder\.self_attention\.(\d+)\.attn\.", r"decoder.transformer_self_attention_layers.\1.self_attn.", key)
    key = re.sub(r"^decoder\.self_attention\.", "decoder.transformer_self_attention_layers.", key)
    key = key.replace("decoder.ffn.", "decoder.transformer_ffn_layers.")
    return re.sub(r"^decoder\.", "sem_seg_head.predictor.", key)


@pytest.fixture(scope="module")
def tiny() -> NativeMask2Former:
    torch.manual_seed(0)
    return NativeMask2Former(**TINY)


def detectron2_layout(model: NativeMask2Former) -> dict[str, np.ndarray]:
    state = {native_to_detectron2_name(k): v.numpy() + 0.5 for k, v in model.model.state_dict().items()}
    assert "sem_seg_head.pixel_decoder.adapter_1.norm.weight" in state
    assert "backbone.res5.2.conv3.norm.running_var" in state and "backbone.res2.0.shortcut.weight" in state
    state["criterion.empty_weight"] = np.ones(6, dtype=np.float32)
    return state


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_detectron2_layout_round_trip(tiny: NativeMask2Former, tmp_path: Path, suffix: str) -> None:
    state = detectron2_layout(tiny)
    path = tmp_path / f"model_final_x{suffix}"
    if suffix == ".pkl":
        with path.open("wb") as handle:
            pickle.dump({"model": state, "__author__": "Mask2Former", "iteration": np.int64(3)}, handle)
    else:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    loaded = NativeMask2Former(weights=str(path), **TINY)
    for key, value in tiny.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value + 0.5, atol=0, rtol=0, msg=key)


def test_native_layout_and_a_broken_checkpoint(tiny: NativeMask2Former, tmp_path: Path) -> None:
    path = tmp_path / "native.pth"
    torch.save(tiny.model.state_dict(), path)
    assert NativeMask2Former(weights=str(path), **TINY).model.state_dict()["decoder.class_embed.bias"].equal(
        tiny.model.state_dict()["decoder.class_embed.bias"])
    state = detectron2_layout(tiny)
    state["sem_seg_head.predictor.extra_head.weight"] = np.zeros(2, dtype=np.float32)
    del state["sem_seg_head.predictor.query_feat.weight"]
    broken = tmp_path / "model_final_broken.pkl"
    broken.write_bytes(pickle.dumps({"model": state}))
    with pytest.raises(ValueError, match=r"model_final_broken\.pkl.*extra_head\.weight.*decoder\.query_feat\.weight"):
        NativeMask2Former(weights=str(broken), **TINY)
    with pytest.raises(ValueError, match="num_classes"):
        NativeMask2Former(weights=str(path), **{**TINY, "num_classes": 4, "training_vocabulary": [["a"], ["b"], ["c"], ["d"]]})
    with pytest.raises(ValueError, match="training_vocabulary has 5"):
        NativeMask2Former(**{**TINY, "num_classes": 4})


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickles_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for index, payload in enumerate([{"model": {"w": Exploit(marker)}}, {"model": {"w": Path("x")}}]):
        path = tmp_path / f"evil{index}.pkl"
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(pickle.UnpicklingError, match="Refusing"):
            read_checkpoint(path)
    assert not marker.exists()


def test_resize_shortest_edge_follows_detectron2() -> None:
    """45 x 70, short 64 -> 64 x 99.56 -> 64 x 100; long side capped: 40 x 400, short 64 -> 64 x 640 > 96 -> 9.6 x 96."""
    assert resize_shortest_edge(45, 70, 64, 128) == (64, 100)
    assert resize_shortest_edge(70, 45, 64, 128) == (100, 64)
    assert resize_shortest_edge(40, 400, 64, 96) == (10, 96)


def test_tiny_generator_outputs(tiny: NativeMask2Former) -> None:
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    (proposals,) = tiny({"image": [image], "meta": [{"height": 30, "width": 50}]})
    assert proposals.masks.shape == (3, 30, 50) and proposals.logits is not None
    assert proposals.logits.shape == (3, 6) and proposals.logits_vocabulary == TINY["training_vocabulary"]
    assert 0 <= float(proposals.masks.min()) and float(proposals.masks.max()) <= 1


def test_native_generator_through_maskclippp_without_detectron2(tmp_path: Path) -> None:
    """The closed 133-class native Mask2Former plugs into MaskCLIP++ like the adapter: COCO -> ADE look-up table,
    64 seen ADE classes, every metric produced."""
    torch.manual_seed(0)
    generator = NativeMask2Former(**{**TINY, "num_classes": 133, "training_vocabulary": "coco_panoptic"})
    model, metrics = maskclippp_on_fake_ade150(generator, tmp_path)
    assert int(model.generator_seen.sum()) == 64
    (lut,) = model._luts.values()
    assert int(lut[0]) == 12 and int(lut[-1]) == 150  # COCO person -> ADE person; void -> the dropped slot
    for key in ("test/mIoU", "test/mIoU_seen", "test/PQ", "test/AP"):
        assert 0.0 <= float(metrics[key]) <= 100.0, key

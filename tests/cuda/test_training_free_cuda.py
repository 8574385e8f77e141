"""Training-free methods on CUDA (issue 17): fp32 equals the CPU, bf16 / fp16 autocast stay within stated tolerances.

Every method runs the same protocol on both devices: three 224 x 224 synthetic scenes, 112-pixel windows with stride
56 (9 windows per image, in chunks of 8: the batched window loop and its chunk boundary), the toy CLIP's own
vocabulary (44 classes, template ``a photo of a {}.``), each method's other defaults (NACLIP's PAMR included). The
compared quantity is :meth:`DenseSegmenter.dense_logits`: raw per-name cosine logits at the image size.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ovs.backbones import CLIP
from ovs.data.synthetic import CLASS_NAMES
from ovs.methods import METHODS

NUM_NAMES = sum(len(synonyms) for synonyms in CLASS_NAMES)  # 78 names of 44 classes
PROTOCOL = {"resize": "none", "slide_crop": 112, "slide_stride": 56, "window_batch": 8, "templates": "single"}
FP32_ATOL = 1e-4
"""Issue 17: CUDA fp32 logits equal CPU fp32 logits to 1e-4 (cosines in [-1, 1]; TF32 off)."""
AUTOCAST_ATOL = {"bf16": 1e-2, "fp16": 2.5e-3}
"""Stated tolerances of autocast logits against CUDA fp32. Bf16 keeps 8 significant bits (relative rounding 2^-9):
the CPU bf16 autocast of the same protocol differs by at most 2.6e-3 (measured, every method), so 1e-2 leaves a
factor ~4; fp16 keeps 11 bits (8x finer), hence 2.5e-3."""
MIN_ARGMAX_AGREEMENT = 0.999
"""Issue 17: the per-pixel argmax over names is identical on at least 99.9 % of the pixels."""


def logits(clip: CLIP, method: str, images: list[Tensor], **overrides: str) -> Tensor:
    """``[B, K_names, H, W]`` float32 logits of ``method`` on ``clip``'s device (vocabulary encoded there)."""
    segmenter = METHODS[method](clip=clip, inference={**PROTOCOL, **overrides})
    segmenter.set_vocabulary(CLASS_NAMES)
    return torch.stack(segmenter.dense_logits(images, [tuple(i.shape[-2:]) for i in images])).float()


def top2_margin(x: Tensor) -> Tensor:
    """Gap between the best and the second-best name per pixel: ``[B, K, H, W] -> [B, H, W]``."""
    top = x.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@pytest.mark.cuda
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_fp32_logits_equal_cpu(method: str, toy_clip_cpu: CLIP, toy_clip_cuda: CLIP, scenes: list[Tensor],
                                    exact_fp32: None) -> None:
    cpu = logits(toy_clip_cpu, method, scenes)
    cuda = logits(toy_clip_cuda, method, [s.cuda() for s in scenes], precision="fp32").cpu()
    assert cuda.shape == cpu.shape == (len(scenes), NUM_NAMES, 224, 224)
    assert cpu.std() > 1e-3  # the logits vary: a constant output would compare equal trivially
    assert (cuda - cpu).abs().max().item() <= FP32_ATOL


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_autocast_logits_within_tolerance(method: str, precision: str, toy_clip_cuda: CLIP,
                                               scenes: list[Tensor], exact_fp32: None) -> None:
    """Autocast logits lie within the stated tolerance of fp32 (and differ from them: autocast did run)."""
    images = [s.cuda() for s in scenes]
    reference = logits(toy_clip_cuda, method, images, precision="fp32")
    low = logits(toy_clip_cuda, method, images, precision=precision)
    error = (low - reference).abs().max().item()
    assert 0 < error <= AUTOCAST_ATOL[precision]


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_autocast_argmax_agreement(method: str, precision: str, toy_clip_cuda: CLIP, scenes: list[Tensor],
                                        exact_fp32: None) -> None:
    """Issue 17's criterion: identical argmax on >= 99.9 % of the pixels (near-ties may flip; the CPU bf16 proxy
    of this protocol gave 99.81-99.99 %, so a bf16 failure here reports a measured shortfall, see the message)."""
    images = [s.cuda() for s in scenes]
    reference = logits(toy_clip_cuda, method, images, precision="fp32")
    low = logits(toy_clip_cuda, method, images, precision=precision)
    agreement = (low.argmax(1) == reference.argmax(1)).float().mean().item()
    flipped = low.argmax(1) != reference.argmax(1)
    worst = top2_margin(reference)[flipped].max().item() if flipped.any() else 0.0
    assert agreement >= MIN_ARGMAX_AGREEMENT, (
        f"{method} {precision}: argmax identical on {100 * agreement:.3f} % of the pixels; the largest fp32 top-2 "
        f"margin among the flipped pixels is {worst:.2e}"
    )

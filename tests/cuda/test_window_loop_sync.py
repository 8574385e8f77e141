"""No host-device synchronisation inside the batched window loop (issue 17).

The window loop (:func:`ovs.inference.slide_inference` driving :meth:`DenseSegmenter.encode_windows`) must queue GPU
work without waiting for it: a ``.item()``, a data-dependent shape (``nonzero``, boolean indexing) or a blocking
copy would stall the CPU once per chunk. On CUDA this is checked with ``torch.cuda.set_sync_debug_mode("error")``,
which raises on every synchronising call; on the CPU (every CI run) a dispatch mode records the operators that read
tensor data on the host, which are the synchronising ones on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from ovs.backbones import CLIP
from ovs.data.synthetic import CLASS_NAMES
from ovs.inference import slide_inference
from ovs.methods import METHODS
from ovs.methods.base import DenseSegmenter

NUM_NAMES = sum(len(synonyms) for synonyms in CLASS_NAMES)  # 78 names of 44 classes
PROTOCOL = {"resize": "none", "slide_crop": 112, "slide_stride": 56, "window_batch": 8, "templates": "single"}
HOST_READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "_unique2", "unique_dim",
              "unique_consecutive"}
"""Operators whose result depends on tensor values on the host: on CUDA each is a device synchronisation."""
MASK_INDEXED = {"index", "index_put", "index_put_"}
"""Indexing operators that synchronise on CUDA when an index is a boolean mask (a data-dependent shape)."""


def window_loop(segmenter: DenseSegmenter, images: list[Tensor]) -> Callable[[], list[Tensor]]:
    """The window loop of ``dense_logits`` on normalised images (after one warm-up call has built the vocabulary,
    the positional-embedding and NACLIP-bias caches)."""
    config = segmenter.config
    normalised = [segmenter.clip.normalize(image[None])[0] for image in images]
    segmenter.dense_logits(images, [tuple(i.shape[-2:]) for i in images])
    return lambda: slide_inference(normalised, segmenter.encode_windows, config.slide_crop, config.slide_stride,
                                   config.window_batch)


def build(clip: CLIP, method: str, **overrides: Any) -> DenseSegmenter:
    segmenter = METHODS[method](clip=clip, inference={**PROTOCOL, **overrides})
    segmenter.set_vocabulary(CLASS_NAMES)
    return segmenter


class HostReads(TorchDispatchMode):
    """Records the :data:`HOST_READS` operators dispatched inside the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        indices = args[1] if name in MASK_INDEXED and len(args) > 1 else ()
        masked = any(isinstance(i, Tensor) and i.dtype == torch.bool for i in indices)
        if name in HOST_READS or masked:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_host_read_recorder_sees_item_and_nonzero() -> None:
    """The recorder catches what it is meant to catch (so an empty record below means something)."""
    x = torch.arange(4.0)
    with HostReads() as reads:
        x.sum().item()
        bool(x[0])
        torch.nonzero(x)
    assert [s.split(".")[1] for s in reads.seen] == ["_local_scalar_dense", "_local_scalar_dense", "nonzero"]
    with HostReads() as reads:
        x[x > 1]
        x[torch.tensor([0, 2])]
    assert [s.split(".")[1] for s in reads.seen] == ["index"]  # the boolean mask only


@pytest.mark.parametrize("method", list(METHODS))
def test_window_loop_has_no_host_reads_on_cpu(method: str, toy_clip_cpu: CLIP, scenes: list[Tensor]) -> None:
    run = window_loop(build(toy_clip_cpu, method), scenes[:1])
    with torch.inference_mode(), HostReads() as reads:
        canvases = run()
    assert reads.seen == []
    assert len(canvases) == 1 and canvases[0].shape == (NUM_NAMES, 224, 224)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("method", list(METHODS))
def test_window_loop_does_not_synchronise_on_cuda(method: str, precision: str, toy_clip_cuda: CLIP,
                                                  scenes: list[Tensor]) -> None:
    run = window_loop(build(toy_clip_cuda, method, precision=precision), [s.cuda() for s in scenes])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.inference_mode():
            canvases = run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [c.shape for c in canvases] == [(NUM_NAMES, 224, 224)] * len(scenes)
    with pytest.raises(RuntimeError):  # the debug mode was active: a forced synchronisation raises
        torch.cuda.set_sync_debug_mode("error")
        try:
            canvases[0].sum().item()
        finally:
            torch.cuda.set_sync_debug_mode("default")

"""The inference protocol of an eval-only dense method (training-free spec §2.3-2.5, §3.1, §6, §7, §9).

One frozen :class:`InferenceConfig` holds every knob of the shared mmseg-style pipeline: test-time resize, slide
window, logit scale, background / area thresholds, score type, templates, vocabulary override, PAMR, window batch and
precision. Methods carry defaults; configs override them globally and per dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

RESIZE_MODES = ("short", "long", "square", "none")
SCORE_MODES = ("probability", "minmax")
THRESHOLD_ORDERS = ("before_renormalize", "after_renormalize")
MINMAX_ORDERS = ("upsample_first", "grid_first")
PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class InferenceConfig:
    """Inference protocol (training-free spec §9; defaults = SCLIP's released protocol, spec §2.5).

    Attributes:
        resize: test-time image resize: ``short`` side (mmseg ``Resize(scale=(max_long_side, size),
            keep_ratio=True)``), ``long`` side, ``square`` (GEM package squash) or ``none``.
        size: target size of ``resize`` in pixels.
        max_long_side: long-side cap of the ``short`` mode (mmseg's 2048); ``None`` = no cap.
        slide_crop: slide window size; ``0`` = whole-image inference (spec §2.3).
        slide_stride: slide window stride (``1 <= stride <= crop`` when sliding).
        pad_to_patch: zero-pad each window (after normalisation, centred) to a multiple of the patch size and crop
            the logits back (ClearCLIP, spec §6).
        logit_scale: multiplies cosine logits before the softmax over all names (spec §2.4 step 1).
        prob_thd: pixels whose top class probability is below it become background (spec §2.4 step 4).
        area_thd: classes covering at most this fraction of the non-background argmax area are zeroed (spec §2.4
            step 3, SCLIP VOC-21); ``None`` = off.
        renormalize: renormalise class probabilities to sum 1 after the synonym max (NACLIP, spec §7).
        threshold_order: with ``renormalize``, which probabilities ``prob_thd`` compares against:
            ``before_renormalize`` (NACLIP's released ``postprocess_result``: label and threshold from the
            synonym-max probabilities, renormalised afterwards; default) or ``after_renormalize`` (threshold on the
            renormalised probabilities).
        score: ``probability`` (argmax of the post-processed probabilities) or ``minmax`` (argmax of per-name
            min-max normalised cosine maps, GEM package ``normalize=True``, spec §3.3).
        minmax_order: where ``score="minmax"`` normalises: ``upsample_first`` (GEM ``forward``: bilinear to full
            resolution, then min-max) or ``grid_first`` (CLIP Surgery ``get_similarity_map``: min-max on each
            window's patch grid, then bilinear).
        foreground_only: drop the background class from the text classifier; background then comes from
            ``prob_thd`` alone (GEM §4.1 VOC protocol, spec §3.4).
        templates: template-set name or list (``openai80``, ``maskclip85``, ``single``, spec §1.2).
        class_names: vocabulary override (packaged class-file name or path) with the dataset's number of classes;
            ``None`` = the dataset's own names.
        pamr_steps: PAMR iterations on the raw logits at output size (spec §9.5); ``0`` = off.
        pamr_dilations: PAMR neighbour dilations.
        window_batch: most windows (or whole images) per backbone forward: the memory budget of one forward.
        precision: autocast dtype on CUDA (``bf16``, ``fp16`` or ``fp32``).
        cpu_precision: ``fp32`` (default) or ``bf16`` autocast on CPU (opt-in: about 2.7x the fp32 matmul throughput
            on CPUs with AVX512-BF16 / AMX, with bf16 rounding).
    """

    resize: str = "short"
    size: int = 336
    max_long_side: int | None = 2048
    slide_crop: int = 224
    slide_stride: int = 112
    pad_to_patch: bool = False
    logit_scale: float = 40.0
    prob_thd: float = 0.0
    area_thd: float | None = None
    renormalize: bool = False
    threshold_order: str = "before_renormalize"
    score: str = "probability"
    minmax_order: str = "upsample_first"
    foreground_only: bool = False
    templates: str | tuple[str, ...] = "openai80"
    class_names: str | None = None
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)
    window_batch: int = 32
    precision: str = "bf16"
    cpu_precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("templates", "pamr_dilations"):  # YAML gives lists; keep the frozen config hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.resize != "none" and self.size < 1:
            problems.append(f"size must be >= 1, got {self.size}")
        if self.max_long_side is not None and self.max_long_side < 1:
            problems.append(f"max_long_side must be >= 1 or None, got {self.max_long_side}")
        if self.slide_crop < 0:
            problems.append(f"slide_crop must be >= 0 (0 = whole image), got {self.slide_crop}")
        if self.slide_crop > 0 and not 1 <= self.slide_stride <= self.slide_crop:
            problems.append(f"slide_stride must be in 1..slide_crop={self.slide_crop}, got {self.slide_stride}")
        if self.logit_scale <= 0:
            problems.append(f"logit_scale must be > 0, got {self.logit_scale}")
        if not 0.0 <= self.prob_thd <= 1.0:
            problems.append(f"prob_thd must be in [0, 1], got {self.prob_thd}")
        if self.area_thd is not None and not 0.0 <= self.area_thd < 1.0:
            problems.append(f"area_thd must be in [0, 1) or None, got {self.area_thd}")
        if self.score not in SCORE_MODES:
            problems.append(f"score must be one of {SCORE_MODES}, got {self.score!r}")
        if self.threshold_order not in THRESHOLD_ORDERS:
            problems.append(f"threshold_order must be one of {THRESHOLD_ORDERS}, got {self.threshold_order!r}")
        if self.minmax_order not in MINMAX_ORDERS:
            problems.append(f"minmax_order must be one of {MINMAX_ORDERS}, got {self.minmax_order!r}")
        if self.pamr_steps < 0 or (self.pamr_steps and not self.pamr_dilations):
            problems.append("pamr_steps must be >= 0, with at least one dilation when > 0")
        if any(d < 1 for d in self.pamr_dilations):
            problems.append(f"pamr_dilations must be >= 1, got {self.pamr_dilations}")
        if self.window_batch < 1:
            problems.append(f"window_batch must be >= 1, got {self.window_batch}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.cpu_precision not in ("fp32", "bf16"):
            problems.append(f"cpu_precision must be 'fp32' or 'bf16', got {self.cpu_precision!r}")
        if problems:
            raise ValueError("Invalid inference protocol: " + "; ".join(problems) + ".")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, overrides: Mapping[str, Any] | None = None) -> InferenceConfig:
        """A copy with ``overrides`` applied; unknown keys raise one error naming the valid ones."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise ValueError(
                f"Unknown inference setting(s) {unknown}; valid settings: {', '.join(self.field_names())}."
            )
        return replace(self, **overrides)

"""Candidate categories per image (InvSeg paper §"Learnable prompt", Table 4; spec §8, O17).

``oracle``: the ground-truth classes present in the image (the paper's protocol upper bound, Table 4 "Ground Truth");
``clip_filter``: a frozen ovs CLIP scores the whole image (and optionally a 3 x 3 grid of crops, max-pooled) against
every foreground class with the templates, softmax at logit scale 100, keeps the smallest top set whose probability
reaches ``top_p`` (0.97), at most ``k_max`` (8) and at least one class; ``precomputed``: names per image from a
DiffSegmenter-format JSON (``{key: {image path: [names]}}``, the union of ``keys``, names mapped to classes through
their synonyms and a ``synonyms`` table); ``all``: every foreground class (split over several prompts when needed,
spec §6 — not faithful). "background" is always appended by the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ovs.backbones import CLIP, TextClassifier, build_text_classifier, create_clip
from ovs.data import IGNORE_INDEX

logger = logging.getLogger(__name__)

CLASS_SOURCES = ("oracle", "clip_filter", "precomputed", "all")
#: DiffSegmenter's union for its released scripts (spec §3).
DIFFSEGMENTER_KEYS = ("image_similarity", "text_similarity")


class ClassFilter:
    """Selects each image's candidate dataset classes (foreground only; the background class id is excluded).

    Args:
        source: ``oracle``, ``clip_filter`` or ``all``.
        clip_model: open_clip model name of the CLIP filter (``ViT-L-14``).
        clip_pretrained: its tag / checkpoint (offline, as :func:`ovs.create_clip`), or ``None`` for random weights.
        templates: template set of the text classifier (``openai80``).
        top_p, k_max: cumulative-probability threshold and the maximum number of classes kept.
        multi_crop: also score a 3 x 3 grid of crops and max-pool each class's probability.
        precomputed: the JSON file of ``precomputed`` (loaded with ``json``, keys matched by file stem).
        keys: the JSON's top-level keys whose names are united (DiffSegmenter: image and text similarity).
        synonyms: ``{name in the JSON: class name}`` for names that are no synonym of a dataset class
            (DiffSegmenter's "plane", "people", "monitor" ...).
        clip: an already-built CLIP (tests, sharing one model).
    """

    def __init__(self, source: str = "oracle", clip_model: str = "ViT-L-14", clip_pretrained: str | None = "openai",
                 templates: str = "openai80", top_p: float = 0.97, k_max: int = 8, multi_crop: bool = False,
                 precomputed: str | None = None, keys: Sequence[str] = DIFFSEGMENTER_KEYS,
                 synonyms: dict[str, str] | None = None, clip: CLIP | None = None) -> None:
        if source not in CLASS_SOURCES:
            raise ValueError(f"class_source must be one of {CLASS_SOURCES}, got {source!r}.")
        if not 0 < top_p <= 1 or k_max < 1:
            raise ValueError(f"need 0 < top_p <= 1 and k_max >= 1, got {top_p}, {k_max}.")
        self.source, self.templates, self.top_p, self.k_max = source, templates, top_p, k_max
        self.multi_crop = multi_crop
        self.clip = clip
        if source == "clip_filter" and clip is None:
            self.clip = create_clip(clip_model, clip_pretrained).requires_grad_(False).eval()
        self._classifier: tuple[tuple[tuple[str, ...], ...], TextClassifier] | None = None
        self.synonyms = {k.lower(): v.lower() for k, v in (synonyms or {}).items()}
        self.names_per_image: dict[str, list[str]] = {}
        if source == "precomputed":
            self.names_per_image = load_precomputed(precomputed, keys)

    def candidates(self, image: Tensor, target: Tensor | None, class_names: Sequence[Sequence[str]],
                   background_index: int | None, file_name: str | None = None) -> list[int]:
        """Candidate foreground class ids of one image ``[3, H, W]`` (``target [H, W]`` for the oracle, the image's
        ``file_name`` for ``precomputed``)."""
        foreground = [c for c in range(len(class_names)) if c != background_index]
        if self.source == "all":
            return foreground
        if self.source == "oracle":
            if target is None:
                raise ValueError("class_source='oracle' needs the ground-truth label map of every image.")
            present = torch.unique(target[target != IGNORE_INDEX]).tolist()
            return [c for c in present if c != background_index]
        if self.source == "precomputed":
            return self._precomputed_candidates(file_name, class_names, foreground)
        return self._clip_candidates(image, class_names, foreground)

    def _precomputed_candidates(self, file_name: str | None, class_names: Sequence[Sequence[str]],
                                foreground: list[int]) -> list[int]:
        stem = Path(file_name or "").stem
        if stem not in self.names_per_image:
            raise KeyError(f"class_source='precomputed': no entry for image {file_name!r} in the JSON file.")
        lookup = {name.lower(): c for c in foreground for name in class_names[c]}
        chosen = set()
        for name in self.names_per_image[stem]:
            key = self.synonyms.get(name.lower(), name.lower())
            if key in lookup:
                chosen.add(lookup[key])
            else:
                logger.info("precomputed class name %r of %s matches no dataset class; ignored.", name, stem)
        return sorted(chosen)

    @torch.no_grad()
    def class_probabilities(self, image: Tensor, class_names: Sequence[Sequence[str]],
                            foreground: Sequence[int]) -> Tensor:
        """Softmax (scale 100) over the foreground classes of CLIP's image-text cosine, ``[len(foreground)]``
        (per class the best synonym; max over the crops with ``multi_crop``)."""
        assert self.clip is not None
        key = tuple(tuple(class_names[c]) for c in foreground)
        if self._classifier is None or self._classifier[0] != key:
            classifier = build_text_classifier(self.clip, [list(n) for n in key], self.templates)
            self._classifier = (key, classifier)
        classifier = self._classifier[1]
        device = self.clip.pixel_mean.device
        size = self.clip.model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        crops = [image]
        if self.multi_crop:
            h, w = image.shape[-2:]
            crops += [image[:, i * h // 3:(i + 1) * h // 3, j * w // 3:(j + 1) * w // 3]
                      for i in range(3) for j in range(3)]
        batch = torch.stack([F.interpolate(c[None].float(), size=size, mode="bicubic", align_corners=False,
                                           antialias=True)[0].clamp(0, 255) for c in crops]).to(device)
        embeddings = self.clip.encode_image(batch)  # [n_crops, D]
        cosine = embeddings @ classifier.embeddings.to(device).T.float()  # [n_crops, K_names]
        per_class = torch.full((len(crops), len(foreground)), -torch.inf, device=device)
        per_class = per_class.scatter_reduce(1, classifier.name_to_class.to(device).expand(len(crops), -1), cosine,
                                             reduce="amax")
        return (100.0 * per_class).softmax(dim=-1).amax(dim=0)  # [K_fg]

    def _clip_candidates(self, image: Tensor, class_names: Sequence[Sequence[str]], foreground: list[int]) -> list[int]:
        probabilities = self.class_probabilities(image, class_names, foreground)
        order = probabilities.argsort(descending=True)
        cumulative = probabilities[order].cumsum(0)
        keep = int((cumulative < self.top_p).sum()) + 1  # the smallest prefix reaching top_p
        keep = max(1, min(keep, self.k_max, len(foreground)))
        return sorted(foreground[i] for i in order[:keep].tolist())


def load_precomputed(path: str | None, keys: Sequence[str]) -> dict[str, list[str]]:
    """``{image stem: names}`` united over ``keys`` of a DiffSegmenter-format JSON (spec §3, §8)."""
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"class_source='precomputed' needs class_filter.precomputed: a JSON file of "
                                f"{{key: {{image path: [names]}}}} (DiffSegmenter format); got {path!r}.")
    data = json.loads(Path(path).read_text())
    missing = [k for k in keys if k not in data]
    if missing:
        raise KeyError(f"{path}: keys {missing} not found; it has {sorted(data)}. Set class_filter.keys.")
    names: dict[str, list[str]] = {}
    for key in keys:
        for image, entries in data[key].items():
            merged = names.setdefault(Path(image).stem, [])
            merged += [n for n in entries if n not in merged]
    return names

"""Text classifier: (model, class names with synonyms, templates) -> normalised embeddings (training-free spec §1.2).

Every class may have several names (synonyms); each name is a separate query and ``name_to_class`` maps it back, so
methods take the max over a class's names (training-free spec §2.4, MaskCLIP++ spec §6.4). Embeddings are cached in
memory per (model identity, text-weight versions, names, templates) and optionally on disk for pretrained weights.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ovs.backbones.factory import CLIP
from ovs.backbones.templates import get_templates
from ovs.data.class_names import validate_class_names

_MEMORY_CACHE: dict[tuple, Tensor] = {}
_MEMORY_CACHE_SIZE = 32
_MODEL_TOKENS: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()
_NEXT_TOKEN = itertools.count()


def _model_token(model: torch.nn.Module) -> int:
    """A number never reused for another model object (``id()`` is reused once a model is freed, which would hand
    a new randomly initialised model the cached embeddings of a dead one)."""
    if model not in _MODEL_TOKENS:
        _MODEL_TOKENS[model] = next(_NEXT_TOKEN)
    return _MODEL_TOKENS[model]


@dataclass
class TextClassifier:
    """Query embeddings of a vocabulary.

    Attributes:
        embeddings: ``[K_names, D]`` template-averaged, re-normalised embedding per name.
        per_template: ``[K_names, T, D]`` L2-normalised embedding per name and template (MaskCLIP++ PSMs).
        name_to_class: ``[K_names]`` class index of each name.
        class_names: the vocabulary, one list of synonyms per class.
        templates: the templates used.
    """

    embeddings: Tensor
    per_template: Tensor
    name_to_class: Tensor
    class_names: list[list[str]]
    templates: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> TextClassifier:
        return TextClassifier(
            self.embeddings.to(device), self.per_template.to(device), self.name_to_class.to(device),
            self.class_names, self.templates,
        )

    def merge_synonyms(self, name_scores: Tensor, dim: int = 1) -> Tensor:
        """Max over each class's names: ``[..., K_names, ...] -> [..., K, ...]`` along ``dim`` (spec §2.4)."""
        dim = dim % name_scores.dim()
        shape = list(name_scores.shape)
        shape[dim] = self.num_classes
        index_shape = [1] * name_scores.dim()
        index_shape[dim] = -1
        index = self.name_to_class.view(index_shape).expand_as(name_scores)
        out = name_scores.new_full(shape, float("-inf"))
        return out.scatter_reduce(dim, index, name_scores, reduce="amax", include_self=True)


def build_text_classifier(
    clip: CLIP,
    class_names: list[list[str]],
    templates: str | list[str] | tuple[str, ...] = "openai80",
    cache_dir: str | Path | None = None,
) -> TextClassifier:
    """Encode every name with every template (training-free spec §1.2: normalise, average, normalise).

    Args:
        clip: the model.
        class_names: one list of names per class (first = display name), validated like a class-name file
            (:func:`ovs.data.class_names.validate_class_names`: no empty or repeated synonym, no duplicate class).
        templates: a template-set name or a list of templates.
        cache_dir: optional directory for an on-disk cache (used only for pretrained weights whose text tower was not
            modified since loading).
    """
    class_names = validate_class_names(class_names)  # the same checks as class-name files
    template_list = get_templates(templates)
    names = [name for synonyms in class_names for name in synonyms]
    name_to_class = torch.tensor([c for c, synonyms in enumerate(class_names) for _ in synonyms])
    key = (clip.identity, _model_token(clip.model), clip.text_versions(), tuple(names), template_list)
    per_template = _MEMORY_CACHE.get(key)
    disk_file = None
    if per_template is None and cache_dir is not None and clip.pretrained is not None and clip.text_tower_unchanged:
        digest = hashlib.sha1(json.dumps([clip.identity, names, template_list]).encode()).hexdigest()[:16]
        disk_file = Path(cache_dir) / f"text_{digest}.pt"
        if disk_file.is_file():
            per_template = torch.load(disk_file, map_location="cpu", weights_only=True)
    if per_template is None:
        sentences = [t.format(name) for name in names for t in template_list]
        with torch.no_grad():
            per_template = clip.encode_text(sentences).view(len(names), len(template_list), -1).cpu()
        if disk_file is not None:
            disk_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(per_template, disk_file)
    _MEMORY_CACHE.pop(key, None)
    _MEMORY_CACHE[key] = per_template  # most recent last; evict the oldest beyond the bound
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
    mean = torch.nn.functional.normalize(per_template.mean(dim=1), dim=-1)
    device = clip.pixel_mean.device
    return TextClassifier(mean.to(device), per_template.to(device), name_to_class.to(device),
                          [list(n) for n in class_names], template_list)


def cache_info() -> int:
    """Number of vocabularies held in the in-memory cache."""
    return len(_MEMORY_CACHE)


def clear_cache() -> None:
    """Empty the in-memory text-embedding cache."""
    _MEMORY_CACHE.clear()

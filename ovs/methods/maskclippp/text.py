"""Text side of MaskCLIP++: vocabularies, templates, training-class mapping and one random synonym per class per
step (spec §6.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ovs.backbones.templates import get_templates
from ovs.data.class_names import load_class_names, normalize_name


def synonym_layout(name_to_class: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """First name index and number of names of each class, ``([K], [K])``.

    Names must be ordered class by class (as :func:`ovs.backbones.build_text_classifier` returns them) and every
    class must have at least one name.
    """
    counts = torch.bincount(name_to_class, minlength=num_classes)  # [K]
    if counts.numel() != num_classes or bool((counts == 0).any()):
        raise ValueError(f"Every one of the {num_classes} classes needs at least one name.")
    if bool((name_to_class[1:] < name_to_class[:-1]).any()):
        raise ValueError("Names must be grouped class by class (class-major order).")
    return counts.cumsum(0) - counts, counts


def sample_synonyms(offsets: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Index of one uniformly drawn name per class, ``[K]`` (spec §6.3: same draw for the whole local batch).

    Args:
        offsets, counts: from :func:`synonym_layout` (on the generator's device).
        generator: seeded per training step, so that a resumed run draws the same names.
    """
    draws = torch.rand(counts.shape, generator=generator, device=counts.device)  # [K] in [0, 1)
    return offsets + (draws * counts).long().clamp_max(counts - 1)


def training_label_map(dataset_names: Sequence[Sequence[str]], train_names: Sequence[Sequence[str]]) -> Tensor:
    """``int64 [K_dataset]``: training-vocabulary index of each dataset class, −1 for classes outside it.

    Classes match by their normalised display name (first synonym), so the training vocabulary may be a subset of
    the dataset's classes (e.g. the seen classes of the synthetic benchmark) or the same classes with other synonyms.

    Raises:
        ValueError: when a training class is not a dataset class.
    """
    index = {normalize_name(names[0]): i for i, names in enumerate(train_names)}
    mapping = [index.get(normalize_name(names[0]), -1) for names in dataset_names]
    missing = sorted(set(index) - {normalize_name(names[0]) for names in dataset_names})
    if missing:
        raise ValueError(
            f"{len(missing)} training classes are not classes of the training dataset (e.g. {missing[:3]}); "
            "train_class_names must list dataset classes (matched by their first name)."
        )
    return torch.tensor(mapping, dtype=torch.int64)


def build_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Resolve a template-set name or list (``fcclip14`` = t14, ``single`` = t1)."""
    return get_templates(templates if isinstance(templates, str) else list(templates))


def resolve_class_names(names: str | Sequence[Sequence[str]]) -> list[list[str]]:
    """A class-name file name / path or explicit synonym lists -> ``list[list[str]]``."""
    return load_class_names(names) if isinstance(names, str) else [list(n) for n in names]

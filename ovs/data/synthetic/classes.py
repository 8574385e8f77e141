"""Class vocabulary of the synthetic open-vocabulary benchmark.

Things are colour–shape combinations (6 colours x 6 shapes = 36 classes), stuff classes are textured backgrounds
(8 classes). Contiguous class ids ``0..K-1`` list the 36 things first (colour-major: ``colour_index * 6 +
shape_index``), then the 8 stuff classes, like COCO panoptic lists its things before its stuff. The COCO-style JSON
files use ``category_id = contiguous id + 1`` (``1..K``; 0 is reserved for void in panoptic PNGs).

Seen / unseen split: the 9 colour–shape combinations in :data:`UNSEEN_THINGS` never appear in the ``train`` split
(neither as masks nor as pixels); they appear in ``val`` and in the CLIP ``pretrain`` split. Every colour and every
shape still occurs in seen classes, so the split tests compositional transfer. All stuff classes are seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

# (display name, synonyms used in captions and class-name files, base RGB)
COLOURS: tuple[tuple[str, tuple[str, ...], tuple[int, int, int]], ...] = (
    ("red", ("red",), (215, 35, 35)),
    ("green", ("green",), (35, 175, 55)),
    ("blue", ("blue",), (35, 75, 215)),
    ("yellow", ("yellow",), (240, 215, 35)),
    ("purple", ("purple", "violet"), (135, 50, 185)),
    ("orange", ("orange",), (245, 135, 25)),
)
"""Thing colours: name, synonyms (first = name) and base RGB (jittered and shaded when rendered)."""

SHAPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("circle", ("circle", "disc")),
    ("square", ("square", "tile")),
    ("triangle", ("triangle",)),
    ("star", ("star",)),
    ("heart", ("heart",)),
    ("cross", ("cross", "plus sign")),
)
"""Thing shapes: name and synonyms (first = name)."""

STUFF: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sky", ("sky", "clear sky")),
    ("grass", ("grass", "lawn")),
    ("water", ("water", "sea")),
    ("sand", ("sand", "beach")),
    ("brick wall", ("brick wall", "bricks")),
    ("snow", ("snow",)),
    ("road", ("road", "asphalt")),
    ("wood", ("wood", "wooden floor")),
)
"""Stuff classes (textured backgrounds): name and synonyms (first = name)."""

UNSEEN_THINGS: tuple[str, ...] = (
    "red circle",
    "green square",
    "blue triangle",
    "yellow star",
    "purple heart",
    "orange cross",
    "red star",
    "blue cross",
    "purple square",
)
"""Thing classes that never appear in the ``train`` split: the colour–shape diagonal plus three more."""

NUM_COLOURS = len(COLOURS)
NUM_SHAPES = len(SHAPES)
NUM_THINGS = NUM_COLOURS * NUM_SHAPES
NUM_STUFF = len(STUFF)
NUM_CLASSES = NUM_THINGS + NUM_STUFF


@dataclass(frozen=True)
class SyntheticClass:
    """One class of the benchmark.

    Attributes:
        index: contiguous id ``0..K-1`` (semantic PNGs and the dataset contract).
        name: display name, e.g. ``"red circle"``.
        synonyms: all names, first is ``name``.
        is_thing: colour–shape object (True) or textured background (False).
        seen: whether the class appears in the ``train`` split.
        colour: colour index for things, ``-1`` for stuff.
        shape: shape index for things, ``-1`` for stuff.
    """

    index: int
    name: str
    synonyms: tuple[str, ...]
    is_thing: bool
    seen: bool
    colour: int
    shape: int

    @property
    def category_id(self) -> int:
        """COCO-style JSON category id (``index + 1``; 0 is void)."""
        return self.index + 1


def thing_index(colour: int, shape: int) -> int:
    """Contiguous class id of the thing ``(colour, shape)``."""
    if not (0 <= colour < NUM_COLOURS and 0 <= shape < NUM_SHAPES):
        raise ValueError(
            f"thing (colour={colour}, shape={shape}) is outside {NUM_COLOURS} colours x {NUM_SHAPES} shapes"
        )
    return colour * NUM_SHAPES + shape


def stuff_index(stuff: int) -> int:
    """Contiguous class id of the stuff class number ``stuff``."""
    if not 0 <= stuff < NUM_STUFF:
        raise ValueError(f"stuff index {stuff} is outside 0..{NUM_STUFF - 1}")
    return NUM_THINGS + stuff


def _build_classes() -> tuple[SyntheticClass, ...]:
    """All classes in contiguous-id order (things colour-major, then stuff)."""
    classes: list[SyntheticClass] = []
    for c, (colour, colour_syns, _) in enumerate(COLOURS):
        for s, (shape, shape_syns) in enumerate(SHAPES):
            name = f"{colour} {shape}"
            synonyms = tuple(f"{cs} {ss}" for cs in colour_syns for ss in shape_syns)
            classes.append(SyntheticClass(len(classes), name, synonyms, True, name not in UNSEEN_THINGS, c, s))
    for st, (name, synonyms) in enumerate(STUFF):
        classes.append(SyntheticClass(len(classes), name, synonyms, False, True, -1, -1))
    return tuple(classes)


CLASSES: tuple[SyntheticClass, ...] = _build_classes()
"""All ``NUM_CLASSES`` classes in contiguous-id order."""

CLASS_NAMES: list[list[str]] = [list(c.synonyms) for c in CLASSES]
"""Synonyms per class (first is the display name), the ``class_names`` of the dataset contract."""

IS_THING: list[bool] = [c.is_thing for c in CLASSES]
"""Thing (True) / stuff (False) flag per contiguous class id."""

SEEN_CLASSES: tuple[int, ...] = tuple(c.index for c in CLASSES if c.seen)
"""Contiguous ids of the seen classes (27 things + 8 stuff)."""

UNSEEN_CLASSES: tuple[int, ...] = tuple(c.index for c in CLASSES if not c.seen)
"""Contiguous ids of the unseen classes (9 things)."""

SEEN_THING_CLASSES: tuple[int, ...] = tuple(c.index for c in CLASSES if c.seen and c.is_thing)
"""Contiguous ids of the things allowed in the ``train`` split."""

CLASS_FILE = Path(__file__).with_name("ovs_synthetic.txt")
"""Class-name file in the ovs format: one line per class in contiguous-id order, synonyms separated by ``", "``."""

SEEN_CLASS_FILE = Path(__file__).with_name("ovs_synthetic_seen.txt")
"""Class-name file of the 35 seen classes only (the fine-tuning vocabulary; name matching against it with
:func:`ovs.data.class_names.seen_mask` reproduces :func:`seen_mask`)."""


def seen_mask() -> torch.Tensor:
    """``bool [K]``: per contiguous class id, whether the class appears in the ``train`` split."""
    return torch.tensor([c.seen for c in CLASSES], dtype=torch.bool)


def coco_categories() -> list[dict[str, object]]:
    """COCO panoptic ``categories`` list: ``id`` (1..K), ``name``, ``isthing`` (0/1), ``supercategory``."""
    return [
        {
            "id": c.category_id,
            "name": c.name,
            "isthing": int(c.is_thing),
            "supercategory": SHAPES[c.shape][0] if c.is_thing else "background",
        }
        for c in CLASSES
    ]


def class_file_text(seen_only: bool = False) -> str:
    """Contents of :data:`CLASS_FILE` (or of :data:`SEEN_CLASS_FILE` with ``seen_only``)."""
    return "".join(", ".join(c.synonyms) + "\n" for c in CLASSES if c.seen or not seen_only)

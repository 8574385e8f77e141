"""Caption templates for synthetic scenes, deterministic by a ``numpy.random.Generator``.

Scene captions list *every* visible thing class with its instance count and the stuff classes, e.g.
``"a photo of a red circle and two blue stars on grass."``; they are written to the COCO captions JSON of every
split. The CLIP pre-training split also gets class-level captions (one thing class with its count and size, or one
stuff class) in the phrasing of ovs's prompt templates (``"there is a small red circle in the scene"``), so that the
toy CLIP learns the words those templates use, and shape-only captions (``"a photo of two stars."``) whose only
cue is the shape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from ovs.data.synthetic.classes import COLOURS, SHAPES, STUFF, NUM_SHAPES
from ovs.data.synthetic.render import Scene

NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
"""Count words; a count of one is written with the indefinite article."""

SCENE_TEMPLATES: tuple[str, ...] = (
    "a photo of {things} on {stuff}.",
    "{things} in front of {stuff}.",
    "a picture of {things} with {stuff} in the background.",
    "there {be} {things} in the scene, on {stuff}.",
    "an image of {stuff} with {things}.",
    "a photo of {stuff} and {things}.",
)
"""Templates of complete scene captions (``{be}`` agrees with the first listed count)."""

EMPTY_SCENE_TEMPLATES: tuple[str, ...] = (
    "a photo of {stuff}.",
    "an empty scene of {stuff}.",
    "a picture of {stuff} with nothing on it.",
)
"""Templates of complete captions of scenes without things (pre-training split only)."""

CLASS_TEMPLATES: tuple[str, ...] = (
    "a photo of {obj}.",
    "this is a photo of {obj}",
    "there {be} {obj} in the scene",
    "a photo of {obj} in the scene",
    "a photo of {size_obj}.",
    "this is a photo of {size_obj}.",
    "there {be} {size_obj} in the scene.",
)
"""Templates of class-level captions, following the phrasing of the FC-CLIP / ViLD prompt templates."""

STUFF_TEMPLATES: tuple[str, ...] = (
    "a photo of {stuff}.",
    "a photo of a {stuff}.",
    "there is {stuff} in the scene",
    "this is a photo of {stuff}",
)
"""Templates of stuff-only captions (``"a photo of a {}."`` included because prompt templates produce it)."""


def plural(noun: str) -> str:
    """English plural of the last word: ``"plus sign"`` → ``"plus signs"``, ``"cross"`` → ``"crosses"``."""
    if noun.endswith(("s", "x", "sh", "ch")):
        return noun + "es"
    return noun + "s"


def article(word: str) -> str:
    """Indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: tuple[str, ...], primary_prob: float = 0.7) -> str:
    """The first option with probability ``primary_prob``, else a uniformly drawn synonym."""
    if len(options) == 1 or rng.random() < primary_prob:
        return options[0]
    return options[int(rng.integers(1, len(options)))]


def thing_phrase(class_id: int, count: int, rng: np.random.Generator, size: str | None = None) -> str:
    """Noun phrase for ``count`` instances of thing ``class_id``: ``"a red circle"``, ``"two large blue discs"``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    colour, shape = divmod(class_id, NUM_SHAPES)
    noun = f"{_pick(rng, COLOURS[colour][1])} {_pick(rng, SHAPES[shape][1])}"
    if size is not None:
        noun = f"{size} {noun}"
    if count == 1:
        return f"{article(noun)} {noun}"
    return f"{NUMBER_WORDS.get(count, str(count))} {plural(noun)}"


def join_list(items: list[str]) -> str:
    """``["a", "b", "c"]`` → ``"a, b and c"``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def stuff_phrase(stuff: list[int], rng: np.random.Generator) -> str:
    """``"grass"`` or ``"sky and sand"`` (synonyms drawn by ``rng``)."""
    return join_list([_pick(rng, STUFF[s][1]) for s in stuff])


def thing_counts(scene: Scene) -> dict[int, int]:
    """Number of visible instances per thing class id, in order of first appearance."""
    return dict(Counter(inst.class_id for inst in scene.instances))


def _size_word(radius: float, image_size: int) -> str:
    """``small`` / ``medium`` / ``large`` from the radius relative to the image side."""
    rel = radius / image_size
    return "small" if rel < 0.13 else ("medium" if rel < 0.21 else "large")


def scene_captions(scene: Scene, rng: np.random.Generator, num: int) -> list[str]:
    """``num`` complete captions of ``scene`` with distinct templates where possible (counts every thing class)."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    counts = thing_counts(scene)
    templates = EMPTY_SCENE_TEMPLATES if not counts else SCENE_TEMPLATES
    order = rng.permutation(len(templates))
    captions = []
    for k in range(num):
        template = templates[int(order[k % len(templates)])]
        stuff = stuff_phrase(scene.stuff, rng)
        classes = list(counts)
        rng.shuffle(classes)
        things = join_list([thing_phrase(c, counts[c], rng) for c in classes])
        be = "is" if classes and counts[classes[0]] == 1 else "are"
        captions.append(template.format(things=things, stuff=stuff, be=be))
    return captions


def shape_phrase(shape: int, count: int, rng: np.random.Generator, size: str | None = None) -> str:
    """Noun phrase without colour: ``"a star"``, ``"three small crosses"``."""
    noun = _pick(rng, SHAPES[shape][1])
    if size is not None:
        noun = f"{size} {noun}"
    if count == 1:
        return f"{article(noun)} {noun}"
    return f"{NUMBER_WORDS.get(count, str(count))} {plural(noun)}"


def class_captions(scene: Scene, rng: np.random.Generator, image_size: int) -> list[str]:
    """Class-level captions of ``scene``: one per visible thing class, one per visible shape (without colour, so
    that only the shape tells them apart) and one per stuff class."""
    def caption(phrase: Callable[..., str], key: Any, count: int, radii: list[float]) -> str:
        """One class-level caption; draws the template, then the plain and the sized phrase, in that order."""
        size = _size_word(float(np.mean(radii)), image_size)
        template = CLASS_TEMPLATES[int(rng.integers(len(CLASS_TEMPLATES)))]
        return template.format(
            obj=phrase(key, count, rng),
            size_obj=phrase(key, count, rng, size=size),
            be="is" if count == 1 else "are",
        )

    captions = []
    for class_id, count in thing_counts(scene).items():
        radii = [inst.radius for inst in scene.instances if inst.class_id == class_id]
        captions.append(caption(thing_phrase, class_id, count, radii))
    for shape, count in Counter(inst.shape for inst in scene.instances).items():
        radii = [inst.radius for inst in scene.instances if inst.shape == shape]
        captions.append(caption(shape_phrase, shape, count, radii))
    for s in scene.stuff:
        template = STUFF_TEMPLATES[int(rng.integers(len(STUFF_TEMPLATES)))]
        captions.append(template.format(stuff=_pick(rng, STUFF[s][1])))
    return captions

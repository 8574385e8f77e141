"""Class-name files with synonyms, and the seen/unseen split by synonym match.

Files live in ``ovs/data/class_names/<name>.txt``: one line per class, synonyms separated by ", ", the first synonym
is the display name. Two styles ship (maskclippp.md §6.2, training-free.md §10):

* FC-CLIP / ODISE "openseg" names used by MaskCLIP++ (``ade150``, ``ade847``, ``coco_panoptic``, ``coco_stuff``,
  ``pc59``, ``pc459``, ``voc21``, ``voc20``, ``cityscapes``), converted from ``<dataset>_with_prompt_eng.txt``
  (``id:`` prefixes and ``invalid_class_id`` lines dropped, repeated synonyms within a line removed);
* SCLIP ``configs/cls_*.txt`` files (``sclip_voc21`` … ``sclip_ade20k``) as released, surrounding spaces stripped
  (``cls_context60``'s ``"wood "`` becomes ``"wood"``; CLIP's tokenizer strips it anyway).

The seen/unseen split follows MaskCLIP++ (maskclippp.md §9.1, quirk Q10): an evaluation class is *seen* when any of
its synonyms equals a synonym of a training class; we compare names normalised to lower case with spaces,
underscores and hyphens removed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

CLASS_NAMES_DIR = Path(__file__).parent / "class_names"
"""Directory of the packaged class-name files."""


class ClassNamesError(ValueError):
    """A vocabulary or class-name file is malformed (empty line, empty synonym, duplicate synonym or duplicate
    class)."""


def available_class_names() -> list[str]:
    """Names of the packaged class-name files (without ``.txt``)."""
    return sorted(p.stem for p in CLASS_NAMES_DIR.glob("*.txt"))


def class_names_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a packaged file name (``"ade150"``) or an explicit path to a class-name file."""
    path = Path(name_or_path)
    if path.suffix == ".txt" or path.parent != Path("."):
        if not path.is_file():
            raise FileNotFoundError(f"Class-name file {path} does not exist.")
        return path
    packaged = CLASS_NAMES_DIR / f"{name_or_path}.txt"
    if not packaged.is_file():
        raise FileNotFoundError(
            f"No packaged class-name file {name_or_path!r} (looked for {packaged}); "
            f"available: {', '.join(available_class_names())}. Pass a path to use your own file."
        )
    return packaged


def validate_class_names(
    classes: Sequence[Sequence[str]], source: str = "<vocabulary>", line_numbers: Sequence[int] | None = None
) -> list[list[str]]:
    """Check a vocabulary (synonyms per class) the same way for files and Python lists; return it as lists.

    Names are stripped; an empty vocabulary, a class without names, an empty synonym, a synonym repeated within a
    class, or two classes with the same synonyms (compared by :func:`normalize_name`, in any order) raise
    :class:`ClassNamesError` naming ``source`` and the file line (``line_numbers``) or the 0-based class index.
    """
    if not classes:
        raise ClassNamesError(f"Vocabulary {source} is empty; give at least one class.")
    validated: list[list[str]] = []
    first: dict[tuple[str, ...], str] = {}
    for index, entry in enumerate(classes):
        where = f"line {line_numbers[index]}" if line_numbers is not None else f"class {index}"
        if isinstance(entry, str) or not all(isinstance(name, str) for name in entry):
            raise ClassNamesError(f"Vocabulary {source}: {where} must be a list of name strings, got {entry!r}.")
        names = [name.strip() for name in entry]
        if not names or any(not name for name in names):
            raise ClassNamesError(f"Vocabulary {source}: {where} ({list(entry)!r}) has an empty synonym.")
        if len(set(names)) != len(names):
            raise ClassNamesError(f"Vocabulary {source}: {where} ({list(entry)!r}) repeats a synonym.")
        key = tuple(sorted(normalize_name(name) for name in names))
        if key in first:
            raise ClassNamesError(
                f"Vocabulary {source}: {where} ({list(entry)!r}) duplicates the class on {first[key]}; every class "
                "needs a distinct set of names."
            )
        first[key] = where
        validated.append(names)
    return validated


def parse_class_names(text: str, source: str = "<string>") -> list[list[str]]:
    """Parse class-name text (one class per line, synonyms split on ","), validating it.

    A UTF-8 byte-order mark is dropped and trailing blank lines at the end are allowed; lines whose first non-blank
    character is ``#`` are comments (they do not count as classes). Any other empty line, a ``#`` inside a class
    line, and the problems of :func:`validate_class_names` raise :class:`ClassNamesError` naming ``source`` and the
    line number.
    """
    lines = text.removeprefix("\ufeff").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    classes: list[list[str]] = []
    numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            raise ClassNamesError(f"Class-name file {source}: line {number} is empty; write one class per line.")
        if "#" in line:
            raise ClassNamesError(
                f"Class-name file {source}: line {number} ({line!r}) contains '#'; comments must be on their own "
                "line (starting with '#')."
            )
        classes.append(line.split(","))
        numbers.append(number)
    if not classes:
        raise ClassNamesError(f"Class-name file {source} is empty.")
    return validate_class_names(classes, f"file {source}", numbers)


def load_class_names(name_or_path: str | os.PathLike[str]) -> list[list[str]]:
    """Load and validate a class-name file: ``list[list[str]]``, synonyms per class, first = display name."""
    path = class_names_path(name_or_path)
    return parse_class_names(path.read_text(encoding="utf-8-sig"), source=str(path))


def write_class_names(path: str | os.PathLike[str], classes: Sequence[Sequence[str]]) -> None:
    """Write classes in the packaged format (one line per class, synonyms joined by ", ")."""
    Path(path).write_text("\n".join(", ".join(names) for names in classes) + "\n", encoding="utf-8")


_NORMALIZE = re.compile(r"[\s_\-]+")


def normalize_name(name: str) -> str:
    """Lower-case ``name`` and remove spaces, underscores and hyphens (``"Traffic-light"`` -> ``"trafficlight"``)."""
    return _NORMALIZE.sub("", name.lower())


VOCABULARY_MATCHES = ("exact", "normalized")
"""How a synonym of one vocabulary matches a synonym of another: ``"exact"`` string equality (the MaskCLIP++ code,
maskclippp.md §8.3) or ``"normalized"`` (:func:`normalize_name`: case, spaces, ``_`` and ``-`` ignored)."""


def vocabulary_key(name: str, match: str = "exact") -> str:
    """The key two synonyms must share to match under ``match`` (:data:`VOCABULARY_MATCHES`)."""
    if match not in VOCABULARY_MATCHES:
        raise ValueError(f"match must be one of {VOCABULARY_MATCHES}, got {match!r}.")
    return name if match == "exact" else normalize_name(name)


def seen_mask(eval_names: Sequence[Sequence[str]], train_names: Sequence[Sequence[str]],
              match: str = "exact") -> torch.Tensor:
    """``bool [K_eval]``: True where an evaluation class shares a synonym with any training class (spec §8.3: the
    reference's string equality by default; ``match="normalized"`` also pairs e.g. A-847 "cellphone" with COCO's
    "cell phone", the only difference on the shipped vocabularies).

    ADE-150 against COCO-Panoptic-133 gives 64 seen / 86 unseen classes (maskclippp.md §7.1).
    """
    train_vocabulary = {vocabulary_key(name, match) for names in train_names for name in names}
    return torch.tensor(
        [any(vocabulary_key(name, match) in train_vocabulary for name in names) for names in eval_names],
        dtype=torch.bool,
    )

"""Class vocabulary, class-name files and the seen/unseen split."""

from __future__ import annotations

import torch

from ovs.data.class_names import load_class_names, seen_mask as seen_mask_by_name
from ovs.data.synthetic import classes as C


def test_counts_and_order() -> None:
    assert (C.NUM_THINGS, C.NUM_STUFF, C.NUM_CLASSES) == (36, 8, 44)
    assert C.IS_THING == [True] * 36 + [False] * 8
    assert [c.index for c in C.CLASSES] == list(range(44))
    assert C.CLASSES[C.thing_index(2, 3)].name == "blue star"
    assert C.CLASSES[C.stuff_index(4)].name == "brick wall"
    assert [c["id"] for c in C.coco_categories()] == list(range(1, 45))


def test_class_files_match_the_code() -> None:
    assert C.CLASS_FILE.read_text() == C.class_file_text()
    assert C.SEEN_CLASS_FILE.read_text() == C.class_file_text(seen_only=True)
    assert load_class_names(C.CLASS_FILE) == C.CLASS_NAMES
    assert C.CLASS_NAMES[4 * 6 + 0] == ["purple circle", "purple disc", "violet circle", "violet disc"]


def test_seen_split() -> None:
    mask = C.seen_mask()
    assert mask.dtype == torch.bool and mask.shape == (44,)
    assert int(mask.sum()) == 35 and C.UNSEEN_CLASSES == tuple(i for i in range(44) if not mask[i])
    assert {C.CLASSES[i].name for i in C.UNSEEN_CLASSES} == set(C.UNSEEN_THINGS)
    assert all(C.CLASSES[i].is_thing for i in C.UNSEEN_CLASSES)
    seen_things = [C.CLASSES[i] for i in C.SEEN_THING_CLASSES]
    assert {c.colour for c in seen_things} == set(range(6)) and {c.shape for c in seen_things} == set(range(6))
    # Name matching against the seen-only vocabulary (MaskCLIP++ convention) gives the same split.
    by_name = seen_mask_by_name(C.CLASS_NAMES, load_class_names(C.SEEN_CLASS_FILE))
    assert torch.equal(by_name, mask)

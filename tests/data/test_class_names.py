"""Packaged class-name files, the validating loader and the seen / unseen split."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovs.data.class_names import (
    ClassNamesError,
    available_class_names,
    load_class_names,
    normalize_name,
    seen_mask,
    write_class_names,
)
from ovs.data.prepare import PASCAL_CONTEXT_59_IDS

COUNTS = {
    "ade150": 150, "ade847": 847, "coco_panoptic": 133, "coco_stuff": 171, "pc59": 59, "pc459": 459, "voc21": 21,
    "voc20": 20, "cityscapes": 19, "sclip_ade20k": 150, "sclip_city_scapes": 19, "sclip_coco_object": 81,
    "sclip_coco_stuff": 171, "sclip_context59": 59, "sclip_context60": 60, "sclip_voc20": 20, "sclip_voc21": 21,
}  # fmt: skip
STUFF_WORDS = (
    "sky, wall, tree, wood, grass, road, sea, river, mountain, sands, desk, bed, building, cloud, lamp, door, window, "
    "wardrobe, ceiling, shelf, curtain, stair, floor, hill, rail, fence"
).split(", ")


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_packaged_files_load_with_expected_counts(name: str) -> None:
    classes = load_class_names(name)
    assert len(classes) == COUNTS[name]
    assert all(names and all(n == n.strip() and n for n in names) for names in classes)


def test_every_packaged_file_is_listed() -> None:
    assert sorted(available_class_names()) == sorted(COUNTS)


def test_ade150_vs_coco_panoptic_gives_64_seen_86_unseen() -> None:
    mask = seen_mask(load_class_names("ade150"), load_class_names("coco_panoptic"))
    assert mask.dtype.is_floating_point is False and mask.shape == (150,)
    assert int(mask.sum()) == 64 and int((~mask).sum()) == 86
    names = [n[0] for n in load_class_names("ade150")]
    assert mask[names.index("person")] and mask[names.index("sky")]
    assert not mask[names.index("arcade machine")] and not mask[names.index("escalator")]


def test_synonym_match_is_exact_by_default_and_normalised_as_an_option() -> None:
    assert normalize_name(" Traffic-Light_pole ") == "trafficlightpole"
    eval_names = [["Traffic-light"], ["dog", "puppy"], ["zebra crossing"], ["cat", "traffic light"]]
    train_names = [["traffic light"], ["Puppy"]]
    assert seen_mask(eval_names, train_names).tolist() == [False, False, False, True]
    assert seen_mask(eval_names, train_names, match="normalized").tolist() == [True, True, False, True]


def test_training_free_files_follow_sclip() -> None:
    voc21 = load_class_names("sclip_voc21")
    assert voc21[0] == STUFF_WORDS and len(STUFF_WORDS) == 26
    assert voc21[15] == [
        "person", "person in shirt", "person in jeans", "person in dress", "person in sweater", "person in skirt",
        "person in jacket",
    ]  # fmt: skip
    assert load_class_names("sclip_voc20") == voc21[1:]
    context60 = load_class_names("sclip_context60")
    assert context60[0] == ["background"] and context60[-1] == ["wood"]
    assert load_class_names("sclip_context59") == context60[1:]
    coco_object = load_class_names("sclip_coco_object")
    assert coco_object[0] == STUFF_WORDS and coco_object[1][-1] == "body" and coco_object[10] == ["traffic light"]
    assert load_class_names("sclip_ade20k")[44] == ["chestofdrawers"]
    assert load_class_names("sclip_city_scapes")[6] == ["trafficlight"]
    assert load_class_names("sclip_coco_stuff")[9] == ["trafficlight"]


def test_maskclippp_files_are_consistent() -> None:
    voc21 = load_class_names("voc21")
    assert voc21[0][0] == "background" and load_class_names("voc20") == voc21[1:]
    coco_stuff = [n[0] for n in load_class_names("coco_stuff")]
    assert coco_stuff[0] == "person" and coco_stuff[79] == "toothbrush" and coco_stuff[80] == "banner"
    pc459 = [n[0] for n in load_class_names("pc459")]
    pc59 = load_class_names("pc59")
    renamed = {"computer": "computer case", "road": "street", "table": "diningtable"}
    for full_id, synonyms in zip(PASCAL_CONTEXT_59_IDS, pc59):
        assert renamed.get(pc459[full_id - 1], pc459[full_id - 1]) == synonyms[0]
    ade150 = [n[0] for n in load_class_names("ade150")]
    assert ade150[:5] == ["wall", "building", "sky", "floor", "tree"] and ade150[-1] == "flag"
    ade847 = [n[0] for n in load_class_names("ade847")]
    assert ade847[:3] == ["wall", "building", "sky"] and ade847[-1] == "adding machine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat\n\ndog\n", "line 2 is empty"),
        ("cat\ndog, , puppy\n", "line 2 .* has an empty synonym"),
        ("cat, cat\n", "line 1 .* repeats a synonym"),
        ("cat, kitty\ndog\nKitty, cat\n", "line 3 .* duplicates the class on line 1"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("cat\ndog # a pet\n", "line 2 .* contains '#'"),
    ],
)
def test_invalid_files_are_rejected_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "names.txt"
    path.write_text(text)
    with pytest.raises(ClassNamesError, match=f"{path}.*{message}|{path} {message}"):
        load_class_names(path)


def test_bom_trailing_newlines_and_comment_lines(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffcat, kitty\r\n# pets above, sky below\r\n  # indented comment\nsky\n\n\n".encode())
    assert load_class_names(path) == [["cat", "kitty"], ["sky"]]


def test_python_lists_are_validated_like_files() -> None:
    from ovs.data.class_names import validate_class_names

    assert validate_class_names([[" cat", "kitty "], ["dog"]]) == [["cat", "kitty"], ["dog"]]
    with pytest.raises(ClassNamesError, match="class 2 .* duplicates the class on class 0"):
        validate_class_names([["cat"], ["dog"], ["Cat"]])
    with pytest.raises(ClassNamesError, match="class 1 .* repeats a synonym"):
        validate_class_names([["cat"], ["dog", "dog"]])
    with pytest.raises(ClassNamesError, match="is empty"):
        validate_class_names([])


def test_same_first_name_different_classes_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    write_class_names(path, [["bag", "handbag"], ["bag", "suitcase"]])
    assert load_class_names(path) == [["bag", "handbag"], ["bag", "suitcase"]]
    assert load_class_names(str(path)) == load_class_names(path)


def test_unknown_name_lists_available_files() -> None:
    with pytest.raises(FileNotFoundError, match="available: ade150"):
        load_class_names("ade151")

"""The generated files follow the real COCO formats and agree with each other."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ovs.data.io import rgb_to_panoptic_id
from ovs.data.synthetic.classes import CLASSES, COLOURS, NUM_SHAPES, SHAPES, STUFF, UNSEEN_CLASSES
from ovs.data.synthetic.generate import generate_split, is_cached
from tests.data.synthetic.conftest import NUM_TRAIN, NUM_VAL, SEED

SPLITS = {"train": NUM_TRAIN, "val": NUM_VAL}


def _load(root: Path, kind: str, split: str) -> dict:
    return json.loads((root / "coco" / "annotations" / f"{kind}_{split}2017.json").read_text())


@pytest.mark.parametrize("split", SPLITS)
def test_panoptic_png_matches_segments_info(synthetic_root: Path, split: str) -> None:
    data = _load(synthetic_root, "panoptic", split)
    assert len(data["images"]) == len(data["annotations"]) == SPLITS[split]
    categories = {c["id"]: c for c in data["categories"]}
    assert len(categories) == 44
    for ann in data["annotations"]:
        coco = synthetic_root / "coco"
        png = Image.open(coco / f"panoptic_{split}2017" / ann["file_name"]).convert("RGB")
        ids = rgb_to_panoptic_id(np.asarray(png))
        sem = np.asarray(Image.open(coco / f"panoptic_semseg_{split}2017" / ann["file_name"]))
        image = Image.open(coco / f"{split}2017" / ann["file_name"])
        assert image.mode == "RGB" and image.size == (112, 112) and sem.dtype == np.uint8
        segments = ann["segments_info"]
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in segments)  # no void, no unknown id
        for seg in segments:
            mask = ids == seg["id"]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert seg["area"] == int(mask.sum())
            assert seg["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            assert seg["isthing"] == categories[seg["category_id"]]["isthing"] and seg["iscrowd"] == 0
            assert np.all(sem[mask] == seg["category_id"] - 1)  # semantic PNG = contiguous id of the segment
        stuff = [s for s in segments if not s["isthing"]]
        assert len({s["category_id"] for s in stuff}) == len(stuff)  # one segment per stuff class


@pytest.mark.parametrize("split", SPLITS)
def test_instance_json_matches_panoptic(synthetic_root: Path, split: str) -> None:
    coco = COCO(str(synthetic_root / "coco" / "annotations" / f"instances_{split}2017.json"))
    assert sorted(coco.getCatIds()) == list(range(1, 37))
    panoptic = {a["image_id"]: a for a in _load(synthetic_root, "panoptic", split)["annotations"]}
    for image_id, pan in panoptic.items():
        ids = rgb_to_panoptic_id(
            np.asarray(Image.open(synthetic_root / "coco" / f"panoptic_{split}2017" / pan["file_name"]).convert("RGB"))
        )
        things = [s for s in pan["segments_info"] if s["isthing"]]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(things)
        for ann, seg in zip(anns, things):
            assert ann["category_id"] == seg["category_id"] and ann["iscrowd"] == 0
            assert np.array_equal(coco.annToMask(ann).astype(bool), ids == seg["id"])
            assert ann["area"] == seg["area"]
            assert ann["bbox"] == mask_utils.toBbox(ann["segmentation"]).tolist()


# Written out independently of ovs.data.synthetic.captions, so that a wrong count word or plural fails the test.
COUNT_WORDS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}
PLURALS = {"circle": "circles", "disc": "discs", "square": "squares", "tile": "tiles", "triangle": "triangles",
           "star": "stars", "heart": "hearts", "cross": "crosses", "plus sign": "plus signs"}


def _caption_parser() -> tuple[re.Pattern[str], dict[tuple[str, str], int]]:
    """Regex of "<count> <colour> <shape>" phrases and the class of each (colour word, shape word) pair."""
    pairs: dict[tuple[str, str], int] = {}
    for c, (_, colour_syns, _) in enumerate(COLOURS):
        for s, (_, shape_syns) in enumerate(SHAPES):
            for cw in colour_syns:
                for sw in shape_syns:
                    pairs[(cw, sw)] = pairs[(cw, PLURALS[sw])] = c * NUM_SHAPES + s
    colours = "|".join(sorted({cw for cw, _ in pairs}, key=len, reverse=True))
    shapes = "|".join(sorted({re.escape(sw) for _, sw in pairs}, key=len, reverse=True))
    pattern = re.compile(rf"\b({'|'.join(COUNT_WORDS)}) ({colours}) ({shapes})\b")
    return pattern, pairs


@pytest.mark.parametrize("split", SPLITS)
def test_captions_count_the_annotated_things(synthetic_root: Path, split: str) -> None:
    pattern, pairs = _caption_parser()
    captions = _load(synthetic_root, "captions", split)
    panoptic = {a["image_id"]: a["segments_info"] for a in _load(synthetic_root, "panoptic", split)["annotations"]}
    per_image = Counter(a["image_id"] for a in captions["annotations"])
    assert set(per_image) == set(panoptic) and set(per_image.values()) == {3}
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    for ann in captions["annotations"]:
        text, segments = ann["caption"], panoptic[ann["image_id"]]
        expected = Counter(s["category_id"] - 1 for s in segments if s["isthing"])
        found: Counter[int] = Counter()
        for count, colour, shape in pattern.findall(text):
            found[pairs[(colour, shape)]] += COUNT_WORDS[count]
        assert found == expected, text
        stuff = {s["category_id"] - 1 for s in segments if not s["isthing"]}
        mentioned = {36 + k for k, (_, syns) in enumerate(STUFF) if any(re.search(rf"\b{s}\b", text) for s in syns)}
        assert mentioned == stuff, text
        assert len(tokenizer.encode(text)) <= 30, text  # fits the toy CLIP's context of 32 with SOT/EOT


def test_train_annotations_have_no_unseen_class(synthetic_root: Path) -> None:
    unseen_ids = {c + 1 for c in UNSEEN_CLASSES}
    for kind in ("panoptic", "instances"):
        data = _load(synthetic_root, kind, "train")
        if kind == "instances":
            anns = data["annotations"]
        else:
            anns = [s for a in data["annotations"] for s in a["segments_info"]]
        assert anns and not {a["category_id"] for a in anns} & unseen_ids
    sem = [np.asarray(Image.open(p)) for p in (synthetic_root / "coco" / "panoptic_semseg_train2017").iterdir()]
    assert not set(np.unique(np.stack(sem)).tolist()) & set(UNSEEN_CLASSES)


def test_image_ids_are_unique_across_splits(synthetic_root: Path) -> None:
    ids = [i["id"] for split in SPLITS for i in _load(synthetic_root, "panoptic", split)["images"]]
    assert len(ids) == len(set(ids))
    assert CLASSES[0].category_id == 1


def test_cache(synthetic_root: Path, tmp_path: Path) -> None:
    assert is_cached(synthetic_root, "val", NUM_VAL, SEED, 112)
    assert not generate_split(synthetic_root, "val", NUM_VAL, SEED, 112)  # cached: nothing written
    assert not is_cached(synthetic_root, "val", NUM_VAL, SEED + 1, 112)
    assert generate_split(tmp_path, "val", 3, 0, 96)
    assert generate_split(tmp_path, "val", 2, 0, 96)  # other parameters: regenerated, stale files removed
    assert len(list((tmp_path / "coco" / "val2017").iterdir())) == 2
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["splits"]["val"]["num_images"] == 2 and meta["splits"]["val"]["image_size"] == 96


def test_pretrain_split_has_images_and_captions_only(tmp_path: Path) -> None:
    assert generate_split(tmp_path, "pretrain", 5, 0, 112)
    coco = tmp_path / "coco"
    assert sorted(p.name for p in coco.iterdir()) == ["annotations", "pretrain2017"]
    captions = json.loads((coco / "annotations" / "captions_pretrain2017.json").read_text())
    assert len(captions["images"]) == 5 and len(captions["annotations"]) >= 5 * 4

"""Scene rendering: determinism, occlusion filtering, split properties, input validation."""

from __future__ import annotations

import filecmp
import re
from pathlib import Path

import numpy as np
import pytest

from ovs.data.synthetic.classes import COLOURS, NUM_SHAPES, NUM_STUFF, SEEN_THING_CLASSES, SHAPES, UNSEEN_CLASSES
from ovs.data.synthetic.generate import generate_split, image_rng, render_split_image, split_config
from ovs.data.synthetic.render import SceneConfig, render_scene, render_texture, shape_mask


def test_same_seed_same_bytes(tmp_path: Path, synthetic_root: Path) -> None:
    from tests.data.synthetic.conftest import NUM_VAL, SEED

    assert generate_split(tmp_path, "val", NUM_VAL, SEED, 112)
    ours, theirs = tmp_path / "coco", synthetic_root / "coco"
    files = [Path("annotations") / f"{kind}_val2017.json" for kind in ("panoptic", "instances", "captions")]
    for folder in ("val2017", "panoptic_val2017", "panoptic_semseg_val2017"):
        files += sorted(p.relative_to(ours) for p in (ours / folder).iterdir())
    assert len(files) == 3 * NUM_VAL + 3
    for rel in files:
        assert filecmp.cmp(ours / rel, theirs / rel, shallow=False), rel


def test_seeds_and_splits_differ() -> None:
    a, _ = render_split_image(0, "val", 0)
    b, _ = render_split_image(1, "val", 0)
    c, _ = render_split_image(0, "pretrain", 0)
    assert not np.array_equal(a.image, b.image) and not np.array_equal(a.image, c.image)


def test_scene_invariants() -> None:
    cfg = split_config("val")
    for index in range(40):
        scene = render_scene(cfg, image_rng(0, "val", index))
        assert scene.image.shape == (112, 112, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.stuff) <= 2 and all(0 <= s < NUM_STUFF for s in scene.stuff)
        for j in range(len(scene.instances)):
            assert int((scene.instance_map == j).sum()) >= cfg.min_visible_area
        assert set(np.unique(scene.instance_map)) <= set(range(-1, len(scene.instances)))
        background = scene.stuff_map[scene.instance_map < 0]
        assert set(np.unique(background)) == set(scene.stuff)


def test_train_split_has_only_seen_things() -> None:
    labels = set()
    for index in range(150):
        scene, _ = render_split_image(0, "train", index)
        labels |= {inst.class_id for inst in scene.instances}
    assert labels <= set(SEEN_THING_CLASSES) and not labels & set(UNSEEN_CLASSES)
    val = set()
    for index in range(150):
        scene, _ = render_split_image(0, "val", index)
        val |= {inst.class_id for inst in scene.instances}
    assert set(UNSEEN_CLASSES) <= val


def test_textures_and_shapes_are_distinct() -> None:
    means = [render_texture(s, np.random.default_rng(0), 64).reshape(-1, 3).mean(0) for s in range(NUM_STUFF)]
    for i in range(NUM_STUFF):
        for j in range(i):
            assert np.abs(means[i] - means[j]).max() > 10 or i == j
    coords = np.linspace(-1.2, 1.2, 64, dtype=np.float32)
    v, u = np.meshgrid(coords, coords, indexing="ij")
    masks = [shape_mask(s, u, v) for s in range(NUM_SHAPES)]
    for i in range(NUM_SHAPES):
        assert 0.1 < masks[i].mean() < 0.7
        for j in range(i):
            assert (masks[i] != masks[j]).mean() > 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": 8},
        {"min_instances": 3, "max_instances": 2},
        {"allowed_things": (40,)},
        {"size_range": (0.3, 0.1)},
        {"mono_colour_prob": 1.5},
    ],
)
def test_invalid_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SceneConfig(**kwargs)  # type: ignore[arg-type]


def test_invalid_split_and_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        render_split_image(0, "test", 0)
    with pytest.raises(ValueError, match="num_images"):
        generate_split(tmp_path, "val", 0)


def test_pretrain_scenes_have_hard_negatives() -> None:
    colour_words = [w for _, syns, _ in COLOURS for w in syns]
    shape_words = [w for _, syns in SHAPES for s in syns for w in (s, s + "s", s + "es")]
    multi = mono = 0
    for index in range(80):
        scene, captions = render_split_image(0, "pretrain", index)
        colours = {inst.colour for inst in scene.instances}
        if len(scene.instances) >= 2:
            multi += 1
            mono += len(colours) == 1
        colourless = [
            c for c in captions
            if any(re.search(rf"\b{w}\b", c) for w in shape_words)
            and not any(re.search(rf"\b{w}\b", c) for w in colour_words)
        ]
        assert len(colourless) == len({inst.shape for inst in scene.instances}), captions  # one per shape
    assert mono / multi > 0.4  # about half of the scenes have things of a single colour (plus chance)

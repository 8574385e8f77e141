"""``segment(image, class_names)`` end to end on the tiny random ViT, every input type, caching and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ovs.methods import SCLIP, create_segmenter, segment
from ovs.methods import api
from tests.conftest import TINY_VIT

TINY = {"model_name": TINY_VIT, "pretrained": None, "device": "cpu", "size": 40, "slide_crop": 32,
        "slide_stride": 16, "templates": "single"}


@pytest.fixture(scope="module")
def array() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(45, 60, 3), dtype=np.uint8)


def test_segment_returns_labels_and_logits_at_the_image_size(array: np.ndarray) -> None:
    api.clear_cache()
    result = segment(array, ["cat, kitty", "dog", "sky"], method="sclip", **TINY)
    assert result.labels.shape == (45, 60) and result.labels.dtype == torch.int64
    assert result.logits.shape == (3, 45, 60)
    assert result.class_names == ["cat", "dog", "sky"]
    assert torch.equal(result.labels, result.logits.argmax(0))
    # probabilities over 4 names, max over cat's two names: each in [0, 1], per-pixel sum at most 1
    assert (result.logits >= 0).all() and (result.logits.sum(0) <= 1 + 1e-6).all()


def test_every_image_input_type_gives_the_same_result(array: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    names = ["cat", "dog"]
    reference = segment(array, names, **TINY).labels
    for image in (str(path), path, Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1)):
        assert torch.equal(segment(image, names, **TINY).labels, reference)
    # float images in [0, 255] are accepted too (resized without uint8 rounding, so not bit-identical)
    assert segment(torch.from_numpy(array).permute(2, 0, 1).float(), names, **TINY).labels.shape == (45, 60)


def test_float_images_in_unit_range_need_an_explicit_value_range(array: np.ndarray) -> None:
    """A [0, 1] float tensor used to be read as 0..255 (an almost black image, one class everywhere)."""
    names = ["cat", "dog", "sky"]
    unit = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    with pytest.raises(ValueError, match="value_range=\\(0, 1\\)"):
        segment(unit, names, **TINY)
    expected = segment(torch.from_numpy(array).permute(2, 0, 1).float(), names, **TINY)
    scaled = segment(unit, names, value_range=(0, 1), **TINY)
    torch.testing.assert_close(scaled.logits, expected.logits, atol=1e-4, rtol=0)
    assert torch.equal(api.load_image(unit, (0, 1)), unit * 255)
    assert torch.equal(api.load_image(array.astype(np.float32) / 255, (0.0, 1.0)).round().byte(),
                       torch.from_numpy(array).permute(2, 0, 1))
    with pytest.raises(ValueError, match="outside value_range"):
        api.load_image(unit * 2, (0, 1))


def test_urls_directories_and_duplicate_classes_fail_with_what_is_supported(array: np.ndarray,
                                                                           tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'https://example.com/a.jpg' is a URL; ovs never downloads"):
        segment("https://example.com/a.jpg", ["cat"], **TINY)
    with pytest.raises(IsADirectoryError, match="is a directory; pass one image file"):
        segment(tmp_path, ["cat"], **TINY)
    with pytest.raises(ValueError, match="class 2 .* duplicates the class on class 0"):
        segment(array, ["cat", "dog", "cat"], **TINY)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match="line 3 .* duplicates the class on line 1"):
        segment(array, str(names), **TINY)


def test_an_already_built_clip_is_used_as_is(tiny_vit, array: np.ndarray) -> None:
    """create_segmenter / segment share the given CLIP (no weights loaded) and give the same result as the module
    built around it."""
    model = create_segmenter("sclip", clip=tiny_vit, size=40, slide_crop=32, slide_stride=16, templates="single")
    assert model.clip is tiny_vit and model.config.size == 40
    model.set_vocabulary(["cat", "dog"])
    expected = model.segment([torch.from_numpy(array).permute(2, 0, 1)])[0]
    result = segment(array, ["cat", "dog"], clip=tiny_vit, size=40, slide_crop=32, slide_stride=16,
                     templates="single")
    assert torch.equal(result.labels, expected.labels)
    torch.testing.assert_close(result.logits, expected.scores)
    assert any(cached.clip is tiny_vit for cached in api._CACHE.values())
    with pytest.raises(TypeError, match="ovs CLIP"):
        create_segmenter("sclip", clip=tiny_vit.model)


def test_segmenter_is_cached_and_protocol_changes_per_call(array: np.ndarray) -> None:
    api.clear_cache()
    segment(array, ["cat", "dog"], **TINY)
    (cached,) = api._CACHE.values()
    low = segment(array, ["background", "cat", "dog"], background_index=0, **{**TINY, "prob_thd": 0.99})
    assert list(api._CACHE.values()) == [cached]
    assert cached.config.prob_thd == 0.99
    assert (low.labels == 0).all()  # nothing is 99 % certain with random weights
    segment(array, ["cat", "dog"], **TINY)
    assert cached.config.prob_thd == 0.0  # per-call settings do not stick


def test_class_file_names_and_gem_options(array: np.ndarray) -> None:
    result = segment(array, "sclip_voc20", method="gem", method_args={"depth": 2},
                     **{**TINY, "slide_crop": 0})
    assert result.logits.shape == (20, 45, 60) and result.class_names[0] == "aeroplane"
    assert ((result.logits >= 0) & (result.logits <= 1)).all()  # min-max maps


def test_create_segmenter_builds_an_eval_module() -> None:
    model = create_segmenter("sclip", TINY_VIT, None, device="cpu", method_args={"keep_residual_ffn": False})
    assert isinstance(model, SCLIP) and not model.training and model.keep_residual_ffn is False


def test_bad_inputs_fail_with_one_clear_message(array: np.ndarray) -> None:
    with pytest.raises(ValueError, match="Unknown method 'sclipp'"):
        segment(array, ["cat"], method="sclipp", **TINY)
    with pytest.raises(ValueError, match="uint8 \\[H, W, 3\\] or float"):
        segment(array.astype(np.int32), ["cat"], **TINY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        segment("missing.jpg", ["cat"], **TINY)
    with pytest.raises(ValueError, match="Unknown inference setting"):
        segment(array, ["cat"], **{**TINY, "crop": 3})
    with pytest.raises(ValueError, match="no background class"):
        segment(array, ["cat", "dog"], **{**TINY, "prob_thd": 0.5})
    with pytest.raises(ValueError, match="non-empty names"):
        segment(array, ["cat, ", "dog"], **TINY)

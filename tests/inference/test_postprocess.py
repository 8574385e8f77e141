"""Post-processing on constructed logits (training-free spec §2.4, §3.4, §7): synonyms, thresholds, GEM's rule."""

from __future__ import annotations

import pytest
import torch

from ovs.backbones import TextClassifier
from ovs.inference import InferenceConfig, minmax_normalize, postprocess


def classifier(class_names: list[list[str]]) -> TextClassifier:
    """A classifier whose only relevant part here is the name -> class map."""
    name_to_class = torch.tensor([c for c, names in enumerate(class_names) for _ in names])
    k = len(name_to_class)
    return TextClassifier(torch.eye(k), torch.eye(k)[:, None], name_to_class, class_names, ("{}",))


def onehot_logits(classes: torch.Tensor, num: int, high: float = 0.3, low: float = 0.1) -> torch.Tensor:
    """Cosine-like logits [num, H, W]: `high` for the given index per pixel, `low` elsewhere."""
    logits = torch.full((num, *classes.shape), low)
    return logits.scatter_(0, classes[None], high)


def test_synonyms_take_the_max_probability_over_names() -> None:
    vocab = classifier([["sky", "clouds"], ["cat"], ["person", "man", "woman"]])
    logits = torch.randn(6, 4, 5) * 0.1
    result = postprocess(logits, vocab, InferenceConfig(logit_scale=40.0), background_index=None)
    p = torch.softmax(40.0 * logits, dim=0)  # over all 6 names
    expected = torch.stack([torch.maximum(p[0], p[1]), p[2], torch.maximum(torch.maximum(p[3], p[4]), p[5])])
    torch.testing.assert_close(result.scores, expected)
    assert torch.equal(result.labels, expected.argmax(0))


def test_prob_threshold_turns_low_confidence_pixels_into_background() -> None:
    vocab = classifier([["background"], ["cat"], ["dog"]])
    logits = torch.zeros(3, 1, 3)
    logits[:, 0, 0] = torch.tensor([0.0, 0.5, 0.0])  # confident cat
    logits[:, 0, 1] = torch.tensor([0.0, 0.02, 0.01])  # cat wins, but p(cat) = 0.40 < 0.5
    logits[:, 0, 2] = torch.tensor([0.0, 0.0, 0.3])  # confident dog
    config = InferenceConfig(logit_scale=40.0, prob_thd=0.5)
    result = postprocess(logits, vocab, config, background_index=0)
    assert result.labels.tolist() == [[1, 0, 2]]
    assert result.scores[:, 0, 1].argmax() == 1  # the scores themselves are untouched by the rule


def test_area_threshold_zeroes_small_classes_relative_to_foreground_area() -> None:
    """50 background, 45 cat and 5 dog argmax pixels: dog's 5 <= 0.1 * (45 + 5) is zeroed (SCLIP keeps only
    areas strictly above), so dog pixels fall back to their next class; cat is kept."""
    classes = torch.zeros(100, dtype=torch.long)
    classes[50:95], classes[95:] = 1, 2
    logits = onehot_logits(classes.view(10, 10), 3)
    logits[1, 9, 5:] = 0.2  # dog pixels: cat second, background third
    vocab = classifier([["background"], ["cat"], ["dog"]])
    result = postprocess(logits, vocab, InferenceConfig(logit_scale=40.0, area_thd=0.1), background_index=0)
    assert (result.scores[2] == 0).all()
    assert (result.labels.flatten()[95:] == 1).all()
    assert (result.labels.flatten()[:50] == 0).all() and (result.labels.flatten()[50:95] == 1).all()
    # 6 dog pixels (> 0.1 * 50 = 5) survive
    classes[94] = 2
    logits = onehot_logits(classes.view(10, 10), 3)
    result = postprocess(logits, vocab, InferenceConfig(logit_scale=40.0, area_thd=0.1), background_index=0)
    assert (result.labels.flatten()[94:] == 2).all()


def test_area_then_probability_threshold_order() -> None:
    """After zeroing a class its pixels' top probability drops; below prob_thd they become background (§2.4).
    Thresholding the probabilities from before the area step would have kept p(dog) = 0.75 and labelled cat."""
    classes = torch.tensor([[1, 1, 1, 1, 2]])
    logits = onehot_logits(classes, 3, high=0.3, low=0.25)
    logits[1, 0, 4] = 0.26  # dog pixel: cat is the runner-up, with p(cat) = 0.15 once dog is zeroed
    vocab = classifier([["background"], ["cat"], ["dog"]])
    config = InferenceConfig(logit_scale=40.0, area_thd=0.25, prob_thd=0.3)
    result = postprocess(logits, vocab, config, background_index=0)
    assert result.labels.tolist() == [[1, 1, 1, 1, 0]]


def test_naclip_renormalisation_after_synonym_max() -> None:
    vocab = classifier([["sky", "clouds"], ["cat"]])
    logits = torch.randn(3, 4, 4) * 0.2
    scores = postprocess(logits, vocab, InferenceConfig(renormalize=True), background_index=None).scores
    torch.testing.assert_close(scores.sum(0), torch.ones(4, 4))
    p = torch.softmax(40.0 * logits, dim=0)
    merged = torch.stack([torch.maximum(p[0], p[1]), p[2]])
    torch.testing.assert_close(scores, merged / merged.sum(0))


def test_naclip_thresholds_before_renormalising_by_default() -> None:
    """NACLIP's ``postprocess_result`` (spec §7): label and ``prob_thd`` from the synonym-max probabilities, then
    renormalise. Constructed name probabilities (background, cat, kitty, dog):
    pixel 0 = (0.10, 0.45, 0.40, 0.05): max 0.45 < 0.5 -> background; renormalised p(cat) = 0.45 / 0.60 = 0.75
    would keep cat. pixel 1 = (0.05, 0.60, 0.30, 0.05): 0.60 passes both. pixel 2 = (0.20, 0.10, 0.10, 0.60):
    dog 0.60 passes both."""
    vocab = classifier([["background"], ["cat", "kitty"], ["dog"]])
    name_probs = torch.tensor([[0.10, 0.45, 0.40, 0.05], [0.05, 0.60, 0.30, 0.05], [0.20, 0.10, 0.10, 0.60]])
    logits = (name_probs.log() / 40.0).T.reshape(4, 1, 3)  # softmax(40 * logits) over names = name_probs
    default = postprocess(logits, vocab, InferenceConfig(renormalize=True, prob_thd=0.5), background_index=0)
    assert default.labels.tolist() == [[0, 1, 2]]
    merged = torch.tensor([[0.10, 0.45, 0.05], [0.05, 0.60, 0.05], [0.20, 0.10, 0.60]])  # by hand
    torch.testing.assert_close(default.scores[:, 0].T, merged / merged.sum(1, keepdim=True))
    option = InferenceConfig(renormalize=True, prob_thd=0.5, threshold_order="after_renormalize")
    assert postprocess(logits, vocab, option, background_index=0).labels.tolist() == [[1, 1, 2]]
    with pytest.raises(ValueError, match="threshold_order"):
        InferenceConfig(threshold_order="later")


def test_gem_minmax_argmax_and_foreground_background_rule() -> None:
    """GEM VOC (spec §3.4): foreground-only classifier, argmax of per-class min-max maps, background where
    softmax(100 cos) over the foreground stays below 0.85."""
    vocab = classifier([["cat"], ["dog"]])  # dataset classes: 0 background, 1 cat, 2 dog
    logits = torch.tensor([[[0.30, 0.20, 0.25, 0.10]], [[0.10, 0.26, 0.24, 0.05]]])  # [2 names, 1, 4]
    config = InferenceConfig(score="minmax", foreground_only=True, logit_scale=100.0, prob_thd=0.85)
    result = postprocess(logits, vocab, config, background_index=0, class_ids=torch.tensor([1, 2]), num_classes=3)
    mm = minmax_normalize(logits)
    # pixel 0: cat (p ~ 1); pixel 1: dog (p = 0.998); pixel 2: min-max cat 0.75 vs dog 0.905 -> dog,
    # but softmax(100 cos) max = 0.73 < 0.85 -> background; pixel 3: both min-max 0 -> first class (cat), p = 0.99
    assert result.labels.tolist() == [[1, 2, 0, 1]]
    assert torch.equal(result.scores[0], torch.zeros(1, 4))
    torch.testing.assert_close(result.scores[1:], mm)


def test_minmax_normalises_each_map_to_unit_range() -> None:
    maps = torch.randn(3, 5, 6)
    out = minmax_normalize(maps)
    torch.testing.assert_close(out.amin(dim=(1, 2)), torch.zeros(3))
    torch.testing.assert_close(out.amax(dim=(1, 2)), torch.ones(3))
    assert torch.equal(minmax_normalize(torch.ones(1, 2, 2)), torch.zeros(1, 2, 2))  # no NaN for a constant map


def test_prob_threshold_needs_a_background_class() -> None:
    with pytest.raises(ValueError, match="no background class"):
        postprocess(torch.zeros(2, 2, 2), classifier([["a"], ["b"]]), InferenceConfig(prob_thd=0.1), None)


def test_inference_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="slide_stride must be in 1..slide_crop=224"):
        InferenceConfig(slide_stride=300)
    with pytest.raises(ValueError, match="Unknown inference setting"):
        InferenceConfig().updated({"slide_size": 3})
    assert InferenceConfig().updated({"pamr_dilations": [1, 2]}).pamr_dilations == (1, 2)

"""The benchmark's re-creations of the authors' loops (tools/benchmark.py) give ovs' label maps: SCLIP's one window
at a time with the one-hot synonym merge, and the gem_torch forward with explicit attention maps."""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from ovs.backbones import TextClassifier
from ovs.cli import REPO_ROOT
from ovs.data import load_class_names
from ovs.inference import minmax_normalize
from ovs.methods import GEM, SCLIP

spec = importlib.util.spec_from_file_location("ovs_benchmark", REPO_ROOT / "tools" / "benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)


def random_classifier(names: list[list[str]], dim: int) -> TextClassifier:
    name_to_class = torch.tensor([c for c, synonyms in enumerate(names) for _ in synonyms])
    embeddings = F.normalize(torch.randn(len(name_to_class), dim, generator=torch.Generator().manual_seed(5)), dim=-1)
    return TextClassifier(embeddings, embeddings[:, None], name_to_class, names, ("{}",))


def test_sclip_reference_loop_gives_the_ovs_labels(tiny_vit) -> None:
    names = load_class_names("sclip_voc21")  # 56 names: exercises the one-hot synonym merge
    classifier = random_classifier(names, tiny_vit.embed_dim)
    protocol = {"size": 40, "slide_crop": 24, "slide_stride": 16, "logit_scale": 65.0, "prob_thd": 0.1,
                "area_thd": 0.1}
    model = SCLIP(clip=tiny_vit, inference=protocol)
    model.set_vocabulary(names, 0, classifier)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in ((37, 50), (45, 45))]
    ours = [r.labels for r in model.segment(images)]
    with torch.inference_mode():
        theirs = benchmark.SCLIPReference(tiny_vit, classifier, asdict(model.config), nullcontext)(images)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert len(torch.cat([o.flatten() for o in ours]).unique()) > 1


@pytest.mark.parametrize("prompts_per_call", [False, True])
def test_gem_reference_forward_gives_the_ovs_labels(tiny_vit, prompts_per_call: bool) -> None:
    """Both GEM re-creations (cached text; the released API, which encodes the prompts per call) give ovs' labels."""
    names = [synonyms[:1] for synonyms in load_class_names("sclip_voc21")]
    classifier = benchmark.gem_classifier(tiny_vit) if prompts_per_call else random_classifier(names, tiny_vit.embed_dim)
    model = GEM(clip=tiny_vit, depth=2, inference={"resize": "none", "foreground_only": True, "prob_thd": 0.85})
    model.set_vocabulary(names, 0, classifier)
    images = [torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8) for _ in range(2)]
    ours = [r.labels for r in model.segment(images)]
    with torch.inference_mode():
        reference = benchmark.GEMReference(tiny_vit, classifier, 2, torch.arange(1, 21), prompts_per_call)
        theirs = reference(images)
        logits = model.dense_logits(images, [(48, 48)] * 2)
    for a, b, name_logits in zip(ours, theirs, logits):
        # pixels may differ only where two min-max maps tie at the top (ties broken by float rounding)
        top2 = minmax_normalize(name_logits[1:]).topk(2, dim=0).values  # foreground names
        assert ((a == b) | (top2[0] - top2[1] < 1e-5)).all()
        assert (a != b).float().mean() < 0.01
    assert len(torch.cat([o.flatten() for o in ours]).unique()) > 1


def test_precomputed_classifier_and_foreground_subset(tiny_vit) -> None:
    names = [["background"], ["cat", "kitty"], ["dog"]]
    classifier = random_classifier(names, tiny_vit.embed_dim)
    model = GEM(clip=tiny_vit, depth=2, inference={"foreground_only": True})
    model.set_vocabulary(names, 0, classifier)
    subset = model.vocabulary.classifier
    assert subset.class_names == [["cat", "kitty"], ["dog"]] and subset.name_to_class.tolist() == [0, 0, 1]
    assert torch.equal(subset.embeddings, classifier.embeddings[1:])
    assert model.vocabulary.class_ids.tolist() == [1, 2]


def test_cpu_bf16_autocast_is_opt_in(tiny_vit) -> None:
    model = SCLIP(clip=tiny_vit, inference={"resize": "none", "slide_crop": 0})
    model.set_vocabulary(["cat", "dog"])
    windows = model.clip.normalize(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    with torch.inference_mode():
        fp32 = model.encode_windows(windows)
        model.configure_protocol(resize="none", slide_crop=0, cpu_precision="bf16")
        bf16 = model.encode_windows(windows)
    assert not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)

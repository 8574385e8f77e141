"""FC-CLIP / MAFT+ class head (issue 13 item 2, maskclippp.md §8.2 step 3) against the spec formula computed here
with scalar loops: min(exp(logit_scale), 100) · cos(class_embed(q), t), max over a class's synonyms, void last."""

from __future__ import annotations

import math

import pytest
import torch

from ovs.generators.native import OpenVocabClassHead
from ovs.generators.native.transformer_decoder import MaskedAttentionDecoder


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_logits(embedded: torch.Tensor, text: torch.Tensor, synonym_class: list[int], void: torch.Tensor,
                     logit_scale: float) -> list[list[list[float]]]:
    scale = min(math.exp(logit_scale), 100.0)
    out = []
    for image in embedded.tolist():
        rows = []
        for e in image:
            per_class: dict[int, float] = {}
            for t, c in zip(text.tolist(), synonym_class):
                value = scale * cosine(e, t)
                per_class[c] = max(per_class.get(c, -math.inf), value)
            rows.append([per_class[c] for c in sorted(per_class)] + [scale * cosine(e, void.tolist())])
        out.append(rows)
    return out


@pytest.mark.parametrize("logit_scale", [math.log(1 / 0.07), math.log(250.0)])
def test_head_equals_the_spec_formula(logit_scale: float) -> None:
    torch.manual_seed(0)
    head = OpenVocabClassHead(hidden_dim=8, embed_dim=6)
    with torch.no_grad():
        head.logit_scale.fill_(logit_scale)
    text = 3 * torch.randn(5, 6)  # unnormalised: the head normalises
    synonym_class = [0, 1, 1, 2, 1]  # class 1 has three synonyms, in any order
    head.set_classifier(text, torch.tensor(synonym_class))
    queries = torch.randn(2, 4, 8)
    with torch.no_grad():
        embedded = head.class_embed(queries)  # [2, 4, 6]
        logits = head(queries)
    expected = reference_logits(embedded, text, synonym_class, head.void_embedding.weight[0].detach(), logit_scale)
    assert logits.shape == (2, 4, 4)
    torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    if logit_scale > math.log(100):
        assert float(logits.abs().max()) <= 100.0 + 1e-4


def test_linear_class_embed_and_gradients() -> None:
    head = OpenVocabClassHead(hidden_dim=4, embed_dim=3, mlp_layers=1)
    assert len(head.class_embed.layers) == 1
    head.set_classifier(torch.eye(3), torch.tensor([0, 1, 2]))
    head(torch.randn(1, 2, 4)).sum().backward()
    assert head.logit_scale.grad is not None and head.void_embedding.weight.grad is not None


def test_head_validates_its_vocabulary() -> None:
    head = OpenVocabClassHead(hidden_dim=4, embed_dim=3)
    with pytest.raises(RuntimeError, match="set_classifier"):
        head(torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="at least one synonym"):
        head.set_classifier(torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"\[S, 3\]"):
        head.set_classifier(torch.randn(2, 4), torch.tensor([0, 1]))


def test_decoder_uses_the_head_on_every_layer() -> None:
    torch.manual_seed(1)
    head = OpenVocabClassHead(hidden_dim=16, embed_dim=8)
    head.set_classifier(torch.randn(4, 8), torch.tensor([0, 0, 1, 2]))
    decoder = MaskedAttentionDecoder(in_channels=16, num_classes=3, hidden_dim=16, num_queries=5, nheads=2,
                                     dim_feedforward=32, dec_layers=2, mask_dim=16, class_head=head)
    features = [torch.randn(1, 16, s, s) for s in (2, 4, 8)]
    with torch.no_grad():
        out = decoder(features, torch.randn(1, 16, 16, 16))
    assert out["pred_logits"].shape == (1, 5, 4) and len(out["aux_outputs"]) == 2
    scale = math.exp(math.log(1 / 0.07))
    for layer in [out, *out["aux_outputs"]]:
        assert float(layer["pred_logits"].abs().max()) <= scale + 1e-4  # cosine logits, not a linear layer's

"""FC-CLIP / MAFT+ open-vocabulary class head (maskclippp.md §8.2 step 3; FC-CLIP paper §3.3, eq. "in-vocabulary
classifier").

Query features ``[B, Q, C]`` -> ``class_embed`` (3-layer MLP, or a linear layer) -> ``e`` ``[B, Q, D]``; the
classifier is the text embeddings of every synonym ``[S, D]`` plus a learned void embedding, both L2-normalised:

    logit(q, s)    = min(exp(logit_scale), 100) · cos(e_q, t_s)
    logit(q, void) = min(exp(logit_scale), 100) · cos(e_q, v)

and the class logit is the maximum over a class's synonyms -> ``[B, Q, K + 1]`` (void last). ``logit_scale`` is
learned, initialised to ``log(1 / 0.07)`` as CLIP's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovs.generators.native.transformer_decoder import MLP

MAX_LOGIT_SCALE = 100.0


class OpenVocabClassHead(nn.Module):
    """Drop-in replacement of :class:`~ovs.generators.native.transformer_decoder.MaskedAttentionDecoder`'s linear
    class head (pass it as ``class_head``); the vocabulary is set with :meth:`set_classifier`.

    Args:
        hidden_dim: query width C.
        embed_dim: CLIP embedding width D.
        mlp_layers: layers of ``class_embed`` (3 in FC-CLIP / MAFT+; 1 = a linear layer).
        logit_scale_init: initial ``logit_scale`` (log of the temperature's inverse).
    """

    def __init__(self, hidden_dim: int, embed_dim: int, mlp_layers: int = 3,
                 logit_scale_init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        if mlp_layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {mlp_layers}.")
        self.class_embed = MLP(hidden_dim, hidden_dim, embed_dim, mlp_layers)
        self.void_embedding = nn.Embedding(1, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(logit_scale_init))
        self.register_buffer("text", torch.zeros(0, embed_dim), persistent=False)
        self.register_buffer("synonym_class", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.num_classes = 0

    def set_classifier(self, text: Tensor, synonym_class: Tensor) -> None:
        """Vocabulary: ``text`` ``[S, D]`` embeddings of every synonym (template-averaged), ``synonym_class``
        ``int64 [S]`` the class 0..K-1 of each synonym (every class needs at least one)."""
        if text.ndim != 2 or text.shape[1] != self.void_embedding.embedding_dim:
            raise ValueError(f"text must be [S, {self.void_embedding.embedding_dim}], got {tuple(text.shape)}.")
        if synonym_class.shape != text.shape[:1]:
            raise ValueError(f"synonym_class must be [{text.shape[0]}], got {tuple(synonym_class.shape)}.")
        num_classes = int(synonym_class.max()) + 1 if synonym_class.numel() else 0
        if num_classes == 0 or torch.bincount(synonym_class, minlength=num_classes).min() == 0:
            raise ValueError("Every class 0..K-1 needs at least one synonym embedding.")
        device = self.void_embedding.weight.device
        self.text = F.normalize(text.float(), dim=-1).to(device)
        self.synonym_class = synonym_class.to(device)
        self.num_classes = num_classes

    def forward(self, queries: Tensor) -> Tensor:
        """``queries`` ``[B, Q, C]`` (after the decoder norm) -> class logits ``[B, Q, K + 1]``."""
        if self.num_classes == 0:
            raise RuntimeError("OpenVocabClassHead has no vocabulary: call set_classifier(text, synonym_class).")
        embed = F.normalize(self.class_embed(queries), dim=-1)  # [B, Q, D]
        void = F.normalize(self.void_embedding.weight, dim=-1)  # [1, D]
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        synonyms = scale * embed @ self.text.to(embed.dtype).T  # [B, Q, S]
        index = self.synonym_class.expand(*synonyms.shape[:2], -1)
        classes = synonyms.new_full((*synonyms.shape[:2], self.num_classes), float("-inf"))
        classes = classes.scatter_reduce(-1, index, synonyms, reduce="amax", include_self=True)  # [B, Q, K]
        return torch.cat([classes, scale * embed @ void.to(embed.dtype).T], dim=-1)

"""A language-like toy task with padding, and a tiny Transformer with a ``norm=`` switch.

The chapter "Normalization without the batch" trains these on a CPU in seconds:

* :func:`padded_sequences` makes variable-length token sequences, padded with token 0 to a
  common length, whose tokens follow a Zipf law (a few frequent words, many rare ones) and
  are *bursty* (each sequence favours a topic of its own), with a label to predict;
* :class:`TinyTransformer` classifies them with self-attention blocks whose normalization
  is BN, LayerNorm or RMSNorm, placed before each sublayer (pre-LN) or after the residual
  addition (post-LN, the original Transformer's placement).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from bnlib.batch_free import RMSNorm
from bnlib.runtime import rng as seeded_rng

PAD = 0
SEQ_NORMS = ("bn", "ln", "rms")
SEQ_PLACEMENTS = ("pre", "post")


def padded_sequences(
    n: int, vocab: int = 64, min_len: int = 4, max_len: int = 24, num_topics: int = 4,
    zipf: float = 1.1, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` token sequences padded with ``PAD = 0``, their labels and their lengths.

    Each sequence has a length uniform in ``[min_len, max_len]`` and a topic uniform in
    ``0 .. num_topics - 1``; its tokens (``1 .. vocab - 1``) are drawn independently with
    probabilities proportional to ``rank ** -zipf``, where the ranking of the words is a
    permutation of its own for each topic. The label (``num_topics`` classes) is the topic:
    it has to be read from which words occur. Seeded with :func:`bnlib.runtime.rng`.

    Returns ``tokens`` ``(n, max_len)`` int64, ``labels`` ``(n,)`` int64, ``lengths``
    ``(n,)`` int64; ``tokens[i, lengths[i]:]`` is all ``PAD``.
    """
    if not 1 <= min_len <= max_len or vocab < 3 or num_topics < 1:
        raise ValueError(f"bad arguments: vocab={vocab}, min_len={min_len}, max_len={max_len}, "
                         f"num_topics={num_topics}")
    g = seeded_rng(seed)
    words = np.arange(1, vocab)
    p = 1.0 / np.arange(1, vocab) ** zipf
    p /= p.sum()
    rankings = [g.permutation(words) for _ in range(num_topics)]
    lengths = g.integers(min_len, max_len + 1, n)
    labels = g.integers(0, num_topics, n)
    tokens = np.full((n, max_len), PAD, dtype=np.int64)
    for i in range(n):
        tokens[i, : lengths[i]] = g.choice(rankings[labels[i]], size=lengths[i], p=p)
    return tokens, labels.astype(np.int64), lengths.astype(np.int64)


class TokenBatchNorm(nn.BatchNorm1d):
    """BN for ``(N, T, D)`` token features, the naive way: statistics per feature over all
    ``N * T`` positions, padding included (``nn.BatchNorm1d`` on the flattened tokens)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def seq_norm(norm: str, d: int) -> nn.Module:
    """The normalization layer over the last dim ``d`` of ``(N, T, d)`` features."""
    if norm not in SEQ_NORMS:
        raise ValueError(f"norm must be one of {SEQ_NORMS}, got {norm!r}")
    return {"bn": TokenBatchNorm, "ln": nn.LayerNorm, "rms": RMSNorm}[norm](d)


class TransformerBlock(nn.Module):
    """Self-attention and a ReLU feed-forward sublayer, each with a residual connection.

    ``placement="pre"``: ``h = h + attn(norm1(h)); h = h + ffn(norm2(h))``;
    ``"post"``: ``h = norm1(h + attn(h)); h = norm2(h + ffn(h))`` (Vaswani et al., 2017).
    Input and output ``(N, T, d)``; ``pad`` ``(N, T)`` is True at padding, which no
    attention weight looks at.
    """

    def __init__(self, d: int, heads: int, ffn: int, norm: str, placement: str) -> None:
        super().__init__()
        if placement not in SEQ_PLACEMENTS:
            raise ValueError(f"placement must be one of {SEQ_PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Linear(ffn, d))
        self.norm1, self.norm2 = seq_norm(norm, d), seq_norm(norm, d)

    def _attend(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        if self.placement == "pre":
            h = h + self._attend(self.norm1(h), pad)
            return h + self.ffn(self.norm2(h))
        h = self.norm1(h + self._attend(h, pad))
        return self.norm2(h + self.ffn(h))


class TinyTransformer(nn.Module):
    """A Transformer encoder classifier for :func:`padded_sequences`.

    Token and learned position embeddings, ``depth`` :class:`TransformerBlock`, a final
    normalization for pre-LN (as in pre-LN Transformers), the mean over the non-padding
    positions and a linear layer. Input ``tokens`` ``(N, T)`` int64 with ``PAD = 0`` for
    padding (``T <= max_len``); output logits ``(N, num_classes)``.
    """

    def __init__(self, vocab: int, num_classes: int, d: int = 32, heads: int = 2,
                 depth: int = 2, ffn: int = 64, norm: str = "ln", placement: str = "pre",
                 max_len: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, d))
        self.blocks = nn.ModuleList(
            TransformerBlock(d, heads, ffn, norm, placement) for _ in range(depth))
        self.final_norm = seq_norm(norm, d) if placement == "pre" else nn.Identity()
        self.head = nn.Linear(d, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pad = tokens == PAD
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h, pad)
        h = self.final_norm(h)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(dim=1) / keep.sum(dim=1))

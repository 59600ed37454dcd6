"""Normalized next-token entropy, the signal R-Stitch routes on."""

from __future__ import annotations

import math

import torch


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = -sum p log p / log V over the full vocabulary, in float32, in [0, 1].

    logits: [..., V] raw model logits (before temperature / top-k / top-p). Entries of -inf are
    allowed: they have p = 0 and contribute 0 (xlogy(0, 0) = 0), so no NaN appears.
    Returns [...] float32.
    """
    vocab = logits.shape[-1]
    if vocab < 2:
        return torch.zeros(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    probs = torch.softmax(logits.float(), dim=-1)
    h = -torch.special.xlogy(probs, probs).sum(dim=-1) / math.log(vocab)
    # Rounding can push a uniform distribution a hair above 1.
    return h.clamp_(0.0, 1.0)

"""A naive R-Stitch: no caches, every step recomputes the whole sequence from scratch (test oracle)."""

from __future__ import annotations

import math

import torch


def entropy64(logits: torch.Tensor) -> float:
    p = torch.softmax(logits.double(), -1)
    return float(-(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum() / math.log(p.numel()))


@torch.no_grad()
def naive_rstitch(slm, llm, prompt_ids, tau, max_new_tokens, eos_ids):
    """Greedy Algorithm 1 with full recomputation; returns (tokens, sources, entropies)."""
    ids, active = list(prompt_ids), "slm"
    tokens, sources, entropies = [], [], []
    while len(tokens) < max_new_tokens:
        model = slm if active == "slm" else llm
        logits = model(torch.tensor([ids])).logits[0, -1]
        h = entropy64(logits)
        token = int(logits.argmax())
        if active == "slm" and h > tau:
            active = "llm"
            continue
        ids.append(token)
        tokens.append(token), sources.append(active), entropies.append(h)
        if token in eos_ids:
            break
        if active == "llm" and h <= tau:
            active = "slm"
    return tokens, sources, entropies

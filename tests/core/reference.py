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


def draft_by_draft_acceptance(tokens, q, logits, sampler, relaxed_ratio=None):
    """The acceptance rule one draft at a time, as written before it became one tensor expression
    (test oracle): (accepted, token). `relaxed_ratio` None: the exact rule."""
    target = logits if sampler.greedy else sampler.probs(logits)
    relaxed = torch.softmax(logits.float(), -1) if relaxed_ratio is not None else None
    for i, token in enumerate(tokens):
        in_vocab = token < target.shape[-1]
        if relaxed is not None and (relaxed_ratio == 0 or (
                in_vocab and float(relaxed[i, token]) >= relaxed_ratio * float(relaxed[i].max()))):
            continue
        if sampler.greedy:
            best = int(target[i].argmax().item())
            if best != token or not in_vocab:
                return i, best
            continue
        p = target[i]
        qi = q[i][:target.shape[-1]] if q.shape[-1] >= target.shape[-1] else \
            torch.nn.functional.pad(q[i], (0, target.shape[-1] - q.shape[-1]))
        if in_vocab and sampler.uniform() < min(1.0, float(p[token] / qi[token])):
            continue
        residual = (p - qi).clamp_(min=0)
        return i, sampler.draw(residual / residual.sum() if residual.sum() > 0 else p)
    last = target[len(tokens)]
    return len(tokens), int(last.argmax().item()) if sampler.greedy else sampler.draw(last)

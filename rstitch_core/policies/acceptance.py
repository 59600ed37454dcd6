"""Which of the SLM's drafts the LLM keeps: the exact rule of speculative decoding, or a relaxed one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rstitch_core.config import Acceptance
from rstitch_core.sampling import Sampler


@dataclass(frozen=True)
class Draft:
    """Provisional SLM tokens past the end of the sequence, waiting for the LLM's verdict."""

    tokens: list[int] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)  # the SLM's normalized entropy per token
    probs: torch.Tensor | None = None  # [n, V] SLM sampling distributions (None when greedy)


def accept_prefix(d: Draft, logits: torch.Tensor, sampler: Sampler, rule: Acceptance = Acceptance.EXACT,
                  relaxed_ratio: float = 1.0) -> tuple[int, int]:
    """logits: [n+1, V] the LLM's logits at each draft position and one past the last (after the
    request's logits controls, Sampler.adjust).

    Returns (accepted, token): how many leading drafts stand, and the LLM's token after them (the
    replacement of the first rejected draft, or a bonus token when all stand).

    exact, greedy: a draft stands when it is the LLM's argmax, so the output is the LLM's own.
    exact, sampled: accept x with probability min(1, p(x)/q(x)); at the first rejection draw from
    norm(max(p - q, 0)), which makes every emitted token exactly p-distributed (p: the LLM's sampling
    distribution, q: the SLM's).
    relaxed: a draft also stands when the LLM's probability of it is at least relaxed_ratio
    times that of the LLM's top token (BiLD-style fallback acceptance: near-ties and the LLM's
    second opinions pass). 1 is the exact greedy rule; 0 keeps every draft.
    """
    target = logits if sampler.greedy else sampler.probs(logits)  # [n+1, V]
    relaxed = torch.softmax(logits.float(), -1) if Acceptance.parse(rule) is Acceptance.RELAXED else None  # [n+1, V]
    for i, token in enumerate(d.tokens):
        in_vocab = token < target.shape[-1]  # an SLM id past the LLM's (padded) vocabulary has p = 0
        if relaxed is not None and (relaxed_ratio == 0 or (
                in_vocab and float(relaxed[i, token]) >= relaxed_ratio * float(relaxed[i].max()))):
            continue
        if sampler.greedy:
            best = int(target[i].argmax().item())
            if best != token or not in_vocab:
                return i, best
            continue
        p, q = target[i], _pad(d.probs[i], target.shape[-1])
        if in_vocab and sampler.uniform() < min(1.0, float(p[token] / q[token])):
            continue
        residual = (p - q).clamp_(min=0)
        # p == q exactly leaves no residual mass; then rejection had probability 0 anyway.
        return i, sampler.draw(residual / residual.sum() if residual.sum() > 0 else p)
    last = target[len(d.tokens)]
    return len(d.tokens), int(last.argmax().item()) if sampler.greedy else sampler.draw(last)


def _pad(probs: torch.Tensor, width: int) -> torch.Tensor:
    """The SLM may have a narrower (less padded) vocabulary than the LLM: no mass on the extra ids."""
    if probs.shape[-1] >= width:
        return probs[..., :width]
    return torch.nn.functional.pad(probs, (0, width - probs.shape[-1]))

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

    One tensor expression per round decides every draft at once (one host sync, not one per draft);
    sampled, the request's generator is left exactly where a draft-by-draft loop would leave it.
    """
    n = len(d.tokens)
    target = logits if sampler.greedy else sampler.probs(logits)  # [n+1, V]
    width = target.shape[-1]
    if n == 0:  # a plain LLM step: its own token
        return 0, int(target[0].argmax()) if sampler.greedy else sampler.draw(target[0])
    drafts = torch.tensor(d.tokens, dtype=torch.long, device=target.device)  # [n]
    in_vocab = drafts < width  # an SLM id past the LLM's (padded) vocabulary has p = 0
    safe = drafts.clamp(max=width - 1)  # [n] (out-of-vocabulary ids read a real column, then are masked)
    rows = torch.arange(n, device=target.device)
    relaxed = torch.zeros(n, dtype=torch.bool, device=target.device)  # [n] kept by the relaxed rule
    if Acceptance.parse(rule) is Acceptance.RELAXED:
        p_raw = torch.softmax(logits[:n].float(), -1)  # [n, V]
        relaxed = (in_vocab & (p_raw[rows, safe] >= relaxed_ratio * p_raw.max(-1).values)
                   if relaxed_ratio > 0 else torch.ones_like(relaxed))
    if sampler.greedy:
        best = target.argmax(-1)  # [n+1]
        stands = relaxed | (in_vocab & (best[:n] == drafts))
        accepted = _leading(stands)
        return accepted, int(best[accepted])
    # Exact rejection sampling: a uniform per draft the relaxed rule did not keep and the LLM's
    # vocabulary holds (what the draft-by-draft rule draws), accept x when u < p(x)/q(x).
    q = _pad(d.probs, width)  # [n, V]
    draws = ~relaxed & in_vocab  # [n]
    state = sampler.get_state()
    u = torch.ones(n, device=target.device)
    u[draws] = torch.rand(int(draws.sum()), generator=sampler.generator).to(target.device)
    p_x, q_x = target[rows, safe], q[rows, safe]  # [n]
    ratio = torch.where(q_x > 0, p_x / q_x.clamp(min=1e-30), torch.ones_like(p_x)).clamp(max=1.0)
    stands = relaxed | (in_vocab & (u < ratio))
    accepted = _leading(stands)
    sampler.set_state(state)  # consume only the uniforms drawn up to the first rejection
    torch.rand(int(draws[:accepted + 1].sum()), generator=sampler.generator)
    if accepted == n:
        return n, sampler.draw(target[n])
    residual = (target[accepted] - q[accepted]).clamp_(min=0)
    # p == q exactly leaves no residual mass; then rejection had probability 0 anyway.
    total = float(residual.sum())
    return accepted, sampler.draw(residual / total if total > 0 else target[accepted])


def _leading(stands: torch.Tensor) -> int:
    """stands: [n] bool -> how many leading entries are True."""
    return int(stands.logical_not().cumsum(0).eq(0).sum())


def _pad(probs: torch.Tensor, width: int) -> torch.Tensor:
    """The SLM may have a narrower (less padded) vocabulary than the LLM: no mass on the extra ids."""
    if probs.shape[-1] >= width:
        return probs[..., :width]
    return torch.nn.functional.pad(probs, (0, width - probs.shape[-1]))

"""Speculative decoding with the same pair and caches: the SLM drafts, the LLM verifies in one pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from rstitch_core.config import RoutingParams
from rstitch_core.entropy import normalized_entropy
from rstitch_core.events import Event, TokenEvent
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence


@dataclass(frozen=True)
class Draft:
    tokens: list[int]
    entropies: list[float]
    probs: torch.Tensor | None  # [n, V] SLM sampling distributions (None when greedy)


@dataclass(frozen=True)
class Verdict:
    accepted: int  # leading draft tokens the LLM accepts
    correction: int  # the LLM's token after them (a replacement, or a bonus if all were accepted)
    entropy: float  # the LLM's entropy at the correction's position


def speculate(seq: Sequence, slm: ModelState, llm: ModelState, routing: RoutingParams,
              sampler: Sampler) -> Iterator[Event]:
    """Decode `seq` to the end by draft-and-verify.

    Greedy output equals the LLM's greedy output; with sampling, standard rejection sampling makes
    the output distribution the LLM's sampling distribution. Rejected positions are cropped from
    both caches before the tokens are emitted, so neither cache holds a token the sequence lacks.
    """
    while seq.running:
        base = len(seq.token_ids)
        d = draft(seq, slm, sampler, min(routing.draft_tokens, seq.room))
        slm.idle()
        v = verify(seq, llm, d, sampler)
        llm.idle()
        emitted = accept(seq, d, v)
        kept = min(base + v.accepted, len(seq.token_ids))
        slm.rollback(kept)
        llm.rollback(kept)
        yield from emitted
    yield seq.finish()


def draft(seq: Sequence, slm: ModelState, sampler: Sampler, num: int) -> Draft:
    """num SLM steps past the end of `seq`; stops early at EOS (nothing after it can be kept)."""
    tokens: list[int] = []
    entropies: list[float] = []
    probs: list[torch.Tensor] = []  # [V] each, only when sampling
    for i in range(num):
        logits = slm.step(seq.token_ids + tokens, turn_start=i == 0).logits[-1]  # [V]
        entropies.append(float(normalized_entropy(logits)))
        if sampler.greedy:
            tokens.append(int(logits.argmax().item()))
        else:
            probs.append(sampler.probs(logits[None])[0])
            tokens.append(sampler.draw(probs[-1]))
        if tokens[-1] in seq.eos_token_ids:
            break
    return Draft(tokens, entropies, torch.stack(probs) if probs else None)


def verify(seq: Sequence, llm: ModelState, d: Draft, sampler: Sampler) -> Verdict:
    """One LLM pass over its unseen tokens plus all drafts: a distribution for every draft position
    and one more for the token after the last draft; accept the longest agreeing prefix."""
    out = llm.step(seq.token_ids + d.tokens, turn_start=True, num_logits=len(d.tokens) + 1)
    target = out.logits if sampler.greedy else sampler.probs(out.logits)  # [n+1, V]
    accepted, correction = _accept_prefix(d, target, sampler)
    return Verdict(accepted, correction, float(normalized_entropy(out.logits[accepted])))


def accept(seq: Sequence, d: Draft, v: Verdict) -> list[TokenEvent]:
    """Append the accepted drafts (the SLM's tokens) and the correction (the LLM's), stopping
    wherever a stop rule ends the sequence."""
    emitted = []
    for token, entropy in zip(d.tokens[:v.accepted], d.entropies):
        if seq.running:
            emitted.append(seq.append(token, "slm", entropy))
    if seq.running:
        emitted.append(seq.append(v.correction, "llm", v.entropy))
    seq.stats.drafted_tokens += len(d.tokens)
    seq.stats.accepted_tokens += v.accepted
    return emitted


def _accept_prefix(d: Draft, target: torch.Tensor, sampler: Sampler) -> tuple[int, int]:
    """target: [n+1, V] LLM logits (greedy) or sampling probs. Returns (accepted, next token).

    Sampling: accept draft x with probability min(1, p(x)/q(x)); at the first rejection draw from
    norm(max(p - q, 0)), which makes the emitted token exactly p-distributed.
    """
    for i, token in enumerate(d.tokens):
        in_vocab = token < target.shape[-1]  # an SLM id past the LLM's (padded) vocabulary has p = 0
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

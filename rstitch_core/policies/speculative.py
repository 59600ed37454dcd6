"""Speculative decoding with the same pair and caches: the SLM drafts, the LLM verifies in one pass."""

from __future__ import annotations

from typing import Iterator

import torch

from rstitch_core.config import RoutingParams
from rstitch_core.entropy import normalized_entropy
from rstitch_core.events import Event
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence


def speculate(seq: Sequence, slm: ModelState, llm: ModelState, routing: RoutingParams,
              sampler: Sampler) -> Iterator[Event]:
    """Decode `seq` to the end by draft-and-verify.

    Greedy output equals the LLM's greedy output; with sampling, standard rejection sampling
    (accept draft d with probability min(1, p(d)/q(d)), else draw from norm(max(p - q, 0))) makes the
    output distribution the LLM's sampling distribution. Rejected positions are cropped from both
    caches, so neither ever holds a token that is not in the sequence.
    """
    while seq.running:
        base = len(seq.token_ids)
        drafts, draft_probs, draft_entropy = _draft(seq, slm, sampler, min(routing.draft_tokens, seq.room))
        # One LLM pass over its unseen tokens plus all drafts: a distribution for every draft
        # position and one more for the token after the last draft.
        out = llm.step(seq.token_ids + drafts, turn_start=True, num_logits=len(drafts) + 1)
        llm_entropy = normalized_entropy(out.logits).tolist()
        target = out.logits if sampler.greedy else sampler.probs(out.logits)  # [n+1, V]
        accepted, correction = _verify(drafts, draft_probs, target, sampler)
        seq.stats.drafted_tokens += len(drafts)
        seq.stats.accepted_tokens += accepted
        emitted = []
        for i in range(accepted):
            if seq.running:
                emitted.append(seq.append(drafts[i], "slm", draft_entropy[i]))
        if seq.running:
            emitted.append(seq.append(correction, "llm", llm_entropy[accepted]))
        # Roll back before anyone sees the tokens: rejected drafts (and drafts cut off by a stop
        # rule) leave both caches; the correction token was never fed to either.
        kept = min(base + accepted, len(seq.token_ids))
        slm.rollback(kept)
        llm.rollback(kept)
        yield from emitted
    yield seq.finish()


def _draft(seq: Sequence, slm: ModelState, sampler: Sampler, num: int
           ) -> tuple[list[int], list[torch.Tensor], list[float]]:
    """num SLM steps ahead of the sequence; stops early at EOS (nothing past it can be kept)."""
    drafts: list[int] = []
    probs: list[torch.Tensor] = []  # [V] each, only when sampling
    entropy: list[float] = []
    for i in range(num):
        logits = slm.step(seq.token_ids + drafts, turn_start=i == 0).logits[-1]  # [V]
        entropy.append(float(normalized_entropy(logits)))
        if sampler.greedy:
            token = int(logits.argmax().item())
        else:
            probs.append(sampler.probs(logits[None])[0])
            token = sampler.draw(probs[-1])
        drafts.append(token)
        if token in seq.eos_token_ids:
            break
    return drafts, probs, entropy


def _verify(drafts: list[int], draft_probs: list[torch.Tensor], target: torch.Tensor,
            sampler: Sampler) -> tuple[int, int]:
    """target: [n+1, V] LLM logits (greedy) or sampling probs. Returns (accepted drafts, next token)."""
    for i, token in enumerate(drafts):
        in_vocab = token < target.shape[-1]  # an SLM id past the LLM's (padded) vocabulary has p = 0
        if sampler.greedy:
            best = int(target[i].argmax().item())
            if best != token or not in_vocab:
                return i, best
            continue
        p, q = target[i], _pad(draft_probs[i], target.shape[-1])
        if in_vocab and sampler.uniform() < min(1.0, float(p[token] / q[token])):
            continue
        residual = (p - q).clamp_(min=0)
        # p == q exactly leaves no residual mass; then rejection had probability 0 anyway.
        return i, sampler.draw(residual / residual.sum() if residual.sum() > 0 else p)
    last = target[len(drafts)]
    return len(drafts), int(last.argmax().item()) if sampler.greedy else sampler.draw(last)


def _pad(probs: torch.Tensor, width: int) -> torch.Tensor:
    """The SLM may have a narrower (less padded) vocabulary than the LLM: no mass on the extra ids."""
    if probs.shape[-1] >= width:
        return probs[..., :width]
    return torch.nn.functional.pad(probs, (0, width - probs.shape[-1]))

"""The two kinds of work the policy loop asks of a model: the SLM drafts, the LLM verifies.

Each phase runs on one model's cache and the sequence it mirrors, appends the tokens it keeps to
that sequence (so the stop rules apply at once) and yields them as TokenEvents, then returns its
result. A phase never calls the model: it yields each pass it needs (a PassRequest, from
ModelState.step) and gets its ForwardOutput back, so one driver can run many phases' passes as one
batch (a worker's StepEngine) or each at once (run_inline, in-process). In-process the sequence is the request's own; served, it is the worker's mirror and the
front end appends the streamed tokens to the request's sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Generator

import torch

from rstitch_core.config import Acceptance
from rstitch_core.entropy import normalized_entropy
from rstitch_core.events import Source, TokenEvent
from rstitch_core.models.backend import ForwardOutput, PassRequest
from rstitch_core.policies.acceptance import Draft, accept_prefix
from rstitch_core.router.switch import RouterInput, SwitchRouter
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence

NEVER = math.inf  # an entropy bound no distribution exceeds


@dataclass(frozen=True)
class DraftOp:
    """Ask the SLM for up to `limit` tokens past the end of the sequence.

    trusted (rstitch, slm): tokens are kept as they are drafted, until one's entropy exceeds
    `stop_above` (and the R-Stitch+ router, if any, agrees): that one is discarded and the SLM hands
    over. Otherwise (speculative, verified) tokens are provisional and drafting stops after the
    first one above `stop_above`, which is kept as the last draft: the LLM may well accept it.
    """

    limit: int
    trusted: bool
    stop_above: float
    model: Source = field(default="slm", init=False)


@dataclass(frozen=True)
class VerifyOp:
    """Ask the LLM to verify `draft` in one pass (an empty draft: one plain decode step).

    Only with an empty draft, the LLM then keeps decoding alone, one token per pass: while its
    entropy exceeds `decode_while_above` (rstitch, llm; None: never) or for `plain_steps` more
    tokens (a draft control that chose no drafts: one call instead of a round trip per token).
    """

    draft: Draft
    acceptance: Acceptance = Acceptance.EXACT
    relaxed_ratio: float = 1.0
    decode_while_above: float | None = None
    plain_steps: int = 0
    model: Source = field(default="llm", init=False)


@dataclass(frozen=True)
class Drafted:
    draft: Draft  # provisional tokens (empty when trusted: those are already in the sequence)
    handoff: bool  # trusted: the SLM was uncertain and handed over (its last token discarded)


@dataclass(frozen=True)
class Verdict:
    accepted: int  # leading drafts the LLM kept
    entropy: float  # the LLM's entropy at its last kept token (who leads next depends on it)
    alone: int = 0  # tokens the LLM then decoded alone


Op = DraftOp | VerifyOp
Result = Drafted | Verdict


def draft_phase(seq: Sequence, slm: ModelState, sampler: Sampler, op: DraftOp,
                router: SwitchRouter | None = None) -> Generator[TokenEvent | PassRequest, ForwardOutput, Drafted]:
    """SLM steps from the end of `seq`; the first pass partially prefills what the SLM has not seen."""
    tokens: list[int] = []
    entropies: list[float] = []
    probs: list[torch.Tensor] = []  # [V] each, only when sampling provisional drafts
    for i in range(op.limit):
        if not seq.running:
            break
        out = yield from slm.step(seq.token_ids + tokens, turn_start=i == 0, hidden=router is not None)
        entropy = float(normalized_entropy(out.logits[-1]))  # the routing signal: the raw distribution's
        logits = seq.adjust(sampler, out.logits[-1:], tokens)[0]  # [V]
        if op.trusted:
            token = sampler.sample(logits)
            if entropy > op.stop_above and (router is None or router(RouterInput(
                    out.hidden, len(seq.token_ids), seq.num_generated, entropy,
                    seq.num_generated - seq.last_switch))):
                return Drafted(Draft(), handoff=True)  # never fed to the SLM: no rollback needed
            yield seq.append(token, "slm", entropy, *sampler.logprob(logits, token))
            continue
        if sampler.greedy:
            tokens.append(int(logits.argmax().item()))
        else:
            probs.append(sampler.probs(logits[None])[0])
            tokens.append(sampler.draw(probs[-1]))
        entropies.append(entropy)
        if seq.ends(tokens[-1]) or entropy > op.stop_above:
            break  # nothing after EOS can be kept; after an uncertain token drafts rarely survive
    return Drafted(Draft(tokens, entropies, torch.stack(probs) if probs else None), handoff=False)


def verify_phase(seq: Sequence, llm: ModelState, sampler: Sampler,
                 op: VerifyOp) -> Generator[TokenEvent | PassRequest, ForwardOutput, Verdict]:
    """One LLM pass over its unseen tokens plus every draft: logits at each draft position and one
    past the last. The accepted drafts (the SLM's tokens) and the LLM's own next token are kept."""
    d = op.draft
    out = yield from llm.step(seq.token_ids + d.tokens, turn_start=True, num_logits=len(d.tokens) + 1)
    logits = seq.adjust(sampler, out.logits, d.tokens)  # [n+1, V]
    accepted, token = accept_prefix(d, logits, sampler, op.acceptance, op.relaxed_ratio)
    entropy = float(normalized_entropy(out.logits[accepted]))
    # Kept drafts carry the LLM's logprob: its distribution is the one they were accepted from.
    for i, (draft_token, draft_entropy) in enumerate(zip(d.tokens[:accepted], d.entropies)):
        if seq.running:
            yield seq.append(draft_token, "slm", draft_entropy, *sampler.logprob(logits[i], draft_token))
    if seq.running:
        yield seq.append(token, "llm", entropy, *sampler.logprob(logits[accepted], token))
    above = NEVER if op.decode_while_above is None else op.decode_while_above
    assert not d.tokens or (above == NEVER and op.plain_steps == 0), "the LLM decodes alone only without drafts"
    alone = 0
    while seq.running and (entropy > above or alone < op.plain_steps):
        raw = (yield from llm.step(seq.token_ids, turn_start=False)).logits  # [1, V]
        entropy = float(normalized_entropy(raw[-1]))
        logits = seq.adjust(sampler, raw)[0]  # [V]
        token = sampler.sample(logits)
        yield seq.append(token, "llm", entropy, *sampler.logprob(logits, token))
        alone += 1
    return Verdict(accepted, entropy, alone)


def run_phase(op: Op, seq: Sequence, state: ModelState, sampler: Sampler,
              router: SwitchRouter | None = None) -> Generator[TokenEvent | PassRequest, ForwardOutput, Result]:
    """The phase `op` asks for, on `state` (the model op.model names)."""
    if isinstance(op, DraftOp):
        return (yield from draft_phase(seq, state, sampler, op, router))
    return (yield from verify_phase(seq, state, sampler, op))

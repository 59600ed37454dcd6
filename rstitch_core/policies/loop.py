"""The policy loop, written once: every policy is a setting of it, and every transport drives it.

A round: the SLM drafts (or, trusted, writes) tokens, then the LLM verifies the drafts in one pass
and writes the next token itself. The settings make it each policy:

  policy       SLM tokens    SLM stops drafting      draft limit (SLM leads / LLM leads)  LLM leads while
  slm          trusted       never                   unbounded / -                        never
  llm          -             -                       - / 0 (the LLM decodes alone)        always
  rstitch(+)   trusted       H > tau: discarded      unbounded / 0                        its H > tau
  speculative  provisional   never                   k / k                                never
  verified     provisional   after the first H > tau k / LLM_LEAD_LIMIT                   its H > tau

`decode` never touches a model: it yields ops (DraftOp, VerifyOp) whose results come back through
send(), plus Rollback and Handoff notes for the driver. `run_local` drives it in-process; the
served front end drives the same generator with each op run by that model's worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Iterator, Protocol

from rstitch_core.config import Policy, RoutingParams
from rstitch_core.events import Direction, Event, Source
from rstitch_core.models.step_engine import run_inline
from rstitch_core.policies.acceptance import Draft
from rstitch_core.policies.phases import NEVER, DraftOp, Op, Result, VerifyOp, run_phase
from rstitch_core.router.switch import SwitchRouter
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence

LLM_LEAD_LIMIT = 2  # verified: drafts per LLM pass while the LLM leads (the SLM is often wrong there)


@dataclass(frozen=True)
class Rollback:
    """Both caches keep only their first `num_tokens` positions: the rest held rejected drafts."""

    num_tokens: int


@dataclass(frozen=True)
class Handoff:
    """The lead moves to the other model; `discarded` SLM tokens were thrown away (rstitch)."""

    direction: Direction
    discarded: int = 0

    @property
    def target(self) -> Source:
        return "llm" if self.direction == "slm_to_llm" else "slm"


Step = Op | Rollback | Handoff


class DraftControl(Protocol):
    """Chooses each provisional draft's length (a cost-aware limit: rstitch_core.drafting.control)."""

    def limit(self, lead: Source, max_limit: int, context_tokens: int) -> int:
        """Tokens to draft, in [0, max_limit]; 0 makes the round a plain LLM step."""

    def observe(self, drafted: int, accepted: int) -> None:
        """The LLM kept the first `accepted` of `drafted` drafts."""

    def plain_steps(self) -> int:
        """After limit() said 0: how many more tokens the LLM decodes alone before the next round
        (>= 0), each counted as an undrafted round."""


@dataclass(frozen=True)
class Plan:
    """One policy as settings of the loop (see the table above)."""

    first_lead: Source
    trusted: bool  # SLM tokens are kept as written (rstitch, slm) instead of verified
    slm_tau: float  # the SLM stops drafting (trusted: hands over) above this entropy
    llm_tau: float  # the LLM leads while its entropy is above this
    slm_lead_limit: int  # draft limit while the SLM leads (0: no SLM pass)
    llm_lead_limit: int  # draft limit while the LLM leads (0: the LLM decodes alone)
    uses_llm: bool = True

    @classmethod
    def of(cls, routing: RoutingParams) -> Plan:
        tau, limit, policy = routing.threshold, routing.draft_limit, routing.policy
        if policy is Policy.SLM:
            return cls("slm", True, NEVER, NEVER, 1 << 30, 0, uses_llm=False)
        if policy is Policy.LLM:
            return cls("llm", True, NEVER, -1.0, 0, 0)
        if policy is Policy.SPECULATIVE:
            return cls("slm", False, NEVER, NEVER, limit, limit)
        if policy is Policy.VERIFIED:
            return cls("slm", False, tau, tau, limit, min(limit, LLM_LEAD_LIMIT))
        return cls("slm", True, tau, tau, 1 << 30, 0)  # rstitch, rstitch+

    def lead_limit(self, lead: Source) -> int:
        return self.slm_lead_limit if lead == "slm" else self.llm_lead_limit


def decode(seq: Sequence, routing: RoutingParams,
           control: DraftControl | None = None) -> Generator[Step, Result | None, None]:
    """Decode `seq` to the end. `control` may shorten each provisional draft (0 drafts is a plain
    LLM step); without it drafts run to the policy's limit."""
    plan = Plan.of(routing)
    lead = plan.first_lead
    while seq.running:
        draft, plain, undrafted = Draft(), 0, False
        limit = min(plan.lead_limit(lead), seq.room)
        if control is not None and not plan.trusted and limit > 0:
            limit = control.limit(lead, limit, len(seq.token_ids))
            undrafted = limit == 0
            plain = control.plain_steps() if undrafted else 0
        if limit > 0:
            drafted = yield DraftOp(limit, plan.trusted, plan.slm_tau)
            draft = drafted.draft
            if drafted.handoff:
                yield Handoff("slm_to_llm", discarded=1)
                lead = "llm"
        if not seq.running or not plan.uses_llm:
            continue
        base = len(seq.token_ids)
        alone = plan.llm_tau if plan.llm_lead_limit == 0 and lead == "llm" else None
        verdict = yield VerifyOp(draft, routing.acceptance, routing.relaxed_ratio, decode_while_above=alone,
                                 plain_steps=plain)
        seq.stats.undrafted_rounds += 1 + verdict.alone if undrafted else 0
        seq.stats.drafted_tokens += len(draft.tokens)
        seq.stats.accepted_tokens += verdict.accepted
        if control is not None and draft.tokens:
            control.observe(len(draft.tokens), verdict.accepted)
        if draft.tokens:
            yield Rollback(base + verdict.accepted)
        next_lead: Source = "llm" if verdict.entropy > plan.llm_tau else "slm"
        if next_lead != lead and seq.running:
            yield Handoff(f"{lead}_to_{next_lead}")
            lead = next_lead


class Steps:
    """Iterates a `decode` loop's steps for a driver, which sets `result` after running an op."""

    def __init__(self, loop: Generator[Step, Result | None, None]):
        self.loop = loop
        self.result: Result | None = None

    def __iter__(self) -> Iterator[Step]:
        while True:
            try:
                step = self.loop.send(self.result)
            except StopIteration:
                return
            self.result = None
            yield step


def run_local(seq: Sequence, slm: ModelState, llm: ModelState, routing: RoutingParams, sampler: Sampler,
              router: SwitchRouter | None = None, control: DraftControl | None = None) -> Iterator[Event]:
    """Drive `decode` in-process: each op runs on this process's model; yields the request's events."""
    states = {"slm": slm, "llm": llm}
    steps = Steps(decode(seq, routing, control))
    for step in steps:
        if isinstance(step, Rollback):
            slm.rollback(step.num_tokens)
            llm.rollback(step.num_tokens)
        elif isinstance(step, Handoff):
            yield seq.switch(step.direction, states[step.target].num_cached, step.discarded)
        else:
            state = states[step.model]
            steps.result = yield from run_inline(run_phase(step, seq, state, sampler, router), state.runner)
    yield seq.finish()

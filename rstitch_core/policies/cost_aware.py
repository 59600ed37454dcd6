"""Cost-aware draft control: each draft's length from this machine's cost profile and the running
acceptance rate, so drafting happens only where it pays (rstitch_core.draft_control has the model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rstitch_core.draft_control import AcceptanceEstimate, choose_draft_limit, drafting_can_pay
from rstitch_core.events import Source
from rstitch_core.profile import CostProfile

# While drafts do not pay at the current acceptance estimate but could at a better one, every
# PROBE_EVERY-th round drafts one token anyway: otherwise the estimate could never recover.
PROBE_EVERY = 8


@dataclass
class CostAwareControl:
    """One request's draft control (the DraftControl protocol of rstitch_core.policies.loop).

    `batch_rows` says how many rows the LLM's passes currently batch (1 in-process); a busier
    worker's passes cost more per extra token, so drafts shrink as the batch grows.
    """

    profile: CostProfile
    batch_rows: Callable[[], int] = lambda: 1
    estimate: AcceptanceEstimate = field(default_factory=AcceptanceEstimate.with_prior)
    undrafted: int = 0  # consecutive rounds without drafts
    chosen: list[int] = field(default_factory=list)  # each round's draft limit (for stats and tests)

    def limit(self, lead: Source, max_limit: int, context_tokens: int) -> int:
        rows = max(1, self.batch_rows())
        k = choose_draft_limit(self.profile, self.estimate.rate, rows, context_tokens, max_limit)
        if k == 0:
            self.undrafted += 1
            if self.undrafted % PROBE_EVERY == 0 and drafting_can_pay(self.profile, rows, context_tokens, max_limit):
                k = 1
        else:
            self.undrafted = 0
        self.chosen.append(k)
        return k

    def observe(self, drafted: int, accepted: int) -> None:
        self.estimate = self.estimate.observe(drafted, accepted)


def cost_aware(profile: CostProfile | None, batch_rows: Callable[[], int] = lambda: 1):
    """A factory of per-request controls for Engine.draft_control (None without a profile)."""
    if profile is None:
        return None

    def make(routing) -> CostAwareControl | None:
        return CostAwareControl(profile, batch_rows) if routing.cost_aware else None
    return make

"""Cost-aware draft control: each draft's length from this machine's cost profile and the running
acceptance rate, so drafting happens only where it pays (rstitch_core.drafting.control has the model);
served, only in windows where drafting measured faster than plain decoding at the current load
(rstitch_core.drafting.windows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rstitch_core.drafting.control import AcceptanceEstimate, choose_draft_limit
from rstitch_core.drafting.profile import CostProfile
from rstitch_core.drafting.windows import DraftWindows
from rstitch_core.events import Source

# While drafts do not pay at the current acceptance estimate but would at PROBE_RATE, every
# PROBE_EVERY-th round drafts anyway: otherwise the estimate could never recover. A probe drafts
# what would pay at PROBE_RATE, so one probe is a real sample, not a single token (a one-token probe
# lifts the estimate so slowly that a request spent most of its tokens undrafted: measured 1.32x
# against 1.56x for a fixed k = 8 on an AMX Xeon, docs/results.md). Where drafts would pay only at
# an acceptance near 1 (4-bit llama.cpp passes on a 2-core CPU: a 9-token pass 2.7 decode steps),
# probes are never due: each cost about 10% there for nothing (verified 0.89x LLM-only, measured).
PROBE_EVERY = 8
PROBE_RATE = 0.9
# In a window where plain decoding streams more, the LLM decodes this many tokens per call and
# concurrent request: every call leaves and rejoins the LLM worker's batch, out of step with the
# other rows, which cost about 3% at 16 streams with 32-token calls (docs/results.md). Mode changes
# then wait for longer calls to end; the windows stay valid however long a call runs.
WINDOW_PLAIN_TOKENS = 32


@dataclass
class CostAwareControl:
    """One request's draft control (the DraftControl protocol of rstitch_core.policies.loop).

    `batch_rows` says how many rows the LLM's passes currently batch (1 in-process); a busier
    worker's passes cost more per extra token, so drafts shrink as the batch grows.
    """

    profile: CostProfile
    batch_rows: Callable[[], int] = lambda: 1
    estimate: AcceptanceEstimate = field(default_factory=AcceptanceEstimate.with_prior)
    windows: DraftWindows | None = None  # served: drafting only in windows where it measured faster
    load: Callable[[], int] = lambda: 1  # concurrent requests (the windows' load bucket)
    undrafted: int = 0  # consecutive rounds without drafts
    plain_window: bool = False  # this round runs in a window of plain decoding
    can_probe: bool = True  # drafts would pay at PROBE_RATE at the last round's batch size and context
    chosen: list[int] = field(default_factory=list)  # each round's draft limit (for stats and tests)

    def limit(self, lead: Source, max_limit: int, context_tokens: int) -> int:
        if not self.chosen:
            # The first round is plain: the LLM prefills the prompt and writes the first token, as
            # LLM-only does. The first token then comes as soon as LLM-only's would, and requests that
            # arrive together prefill in one batched pass: one that drafted first (alone for an
            # instant at a burst's start) prefilled late, a pass of its own that every row of the
            # batch waited for (about 2% at 4 streams, docs/results.md).
            self.plain_window = False
            self.chosen.append(0)
            return 0
        self.plain_window = self.windows is not None and self.windows.mode(self.load()) == "plain"
        if self.plain_window:
            k = 0  # the windows measure drafting again themselves: no probes
        else:
            rows = max(1, self.batch_rows())
            k = choose_draft_limit(self.profile, self.estimate.rate, rows, context_tokens, max_limit)
            self.can_probe = k > 0 or choose_draft_limit(self.profile, PROBE_RATE, rows, context_tokens, max_limit) > 0
            probe_due = self.undrafted > 0 and self.undrafted % PROBE_EVERY == 0
            if k == 0 and probe_due and self.can_probe:
                k = choose_draft_limit(self.profile, PROBE_RATE, rows, context_tokens, max_limit, min_gain=0.0)
        self.undrafted = 0 if k else self.undrafted + 1
        self.chosen.append(k)
        return k

    def observe(self, drafted: int, accepted: int) -> None:
        self.estimate = self.estimate.observe(drafted, accepted)

    def plain_steps(self) -> int:
        # Decode alone up to the next probe round, where the batch size is looked at again too (in a
        # plain window, or where no probe can be due: WINDOW_PLAIN_TOKENS per call and request, and
        # the windows or the next round's pricing decide when drafting returns). The first round
        # writes one token.
        if len(self.chosen) == 1:
            return 0
        steps = (WINDOW_PLAIN_TOKENS * max(1, self.load()) - 1 if self.plain_window or not self.can_probe
                 else -self.undrafted % PROBE_EVERY)
        self.undrafted += steps
        self.chosen.extend([0] * steps)
        return steps


def cost_aware(profile: CostProfile | None, batch_rows: Callable[[], int] = lambda: 1):
    """A factory of per-request controls for Engine.draft_control (None without a profile)."""
    if profile is None:
        return None

    def make(routing) -> CostAwareControl | None:
        return CostAwareControl(profile, batch_rows) if routing.cost_aware else None
    return make

"""How many tokens the SLM should draft per LLM pass, from this machine's cost profile.

One round: the SLM drafts k tokens (k decode steps), then the LLM verifies them in one pass over
k + 1 new tokens (the drafts plus the token before them) that yields a logit row for each. With an
i.i.d. per-token acceptance rate a, the round emits the accepted prefix plus the LLM's own token:

    E[tokens](k) = 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a)      (k + 1 when a = 1)
    T(k)         = sum_{i<k} T_slm(1 token, kv + i, b rows) + T_llm(k + 1 tokens, kv, b rows)
    k*           = argmax over k in [0, max_limit] of E[tokens](k) / T(k)

k = 0 is plain LLM decoding: one token per LLM decode step. Drafting pays only where a (k+1)-token
LLM pass costs little more than a decode step (memory-bound GPUs, AMX CPUs); on a compute-bound CPU
it costs about k+1 steps and no k > 0 can win. With b rows per pass, every row's drafts ride in the
same passes, so a busier worker's passes grow and the chosen k shrinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from rstitch_core.drafting.profile import CostProfile

# Drafting must be projected to beat plain decoding by 30%. The projection assumes i.i.d. acceptance
# over k drafts, but verified drafts end early at the SLM's first uncertain token and each round
# has costs outside the passes: on the 2-core AMD EPYC of docs/results.md it projected 1.21x
# (a = 0.97, k = 3) where `rstitch bench` measured 0.92-0.98x. Machines where drafts pay (GPUs,
# AMX CPUs) project 2x and more, far above the margin.
MIN_GAIN = 0.3


def expected_tokens(acceptance_rate: float, k: int) -> float:
    """Tokens one round emits on average: (1 - a^(k+1)) / (1 - a), or k + 1 when a = 1."""
    a = acceptance_rate
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def round_seconds(profile: CostProfile, k: int, batch_rows: int, context_tokens: int) -> float:
    """Projected time of one round: k SLM decode steps, then one LLM pass over k + 1 tokens."""
    drafting = sum(profile.slm.decode_seconds(context_tokens + i, batch_rows) for i in range(k))
    return drafting + profile.llm.verify_seconds(k + 1, context_tokens, batch_rows)


def tokens_per_second(profile: CostProfile, acceptance_rate: float, k: int, batch_rows: int = 1,
                      context_tokens: int = 0) -> float:
    """Expected emitted tokens per second of each row with draft limit k (see the module docstring)."""
    return expected_tokens(acceptance_rate, k) / round_seconds(profile, k, batch_rows, context_tokens)


def choose_draft_limit(profile: CostProfile, acceptance_rate: float, batch_rows: int, context_tokens: int,
                       max_limit: int, *, min_gain: float = MIN_GAIN) -> int:
    """The draft limit k in [0, max_limit] with the most expected tokens per second.

    Rate(k) = E[tokens](k) / T(k) with E[tokens](k) = (1 - a^(k+1)) / (1 - a) (k + 1 when a = 1)
    and T(k) = k SLM decode steps + one LLM pass over k + 1 tokens, all at `batch_rows` rows and
    `context_tokens` cached. k = 0 is plain LLM decoding; a k > 0 is chosen only if its rate beats
    k = 0's by more than `min_gain` (a fraction), so an imprecise fit never tips a machine into
    drafts that do not pay. Ties go to the smaller k.
    """
    if not 0.0 <= acceptance_rate <= 1.0:
        raise ValueError(f"acceptance_rate must be in [0, 1], got {acceptance_rate!r}")
    if batch_rows < 1 or context_tokens < 0 or max_limit < 0:
        raise ValueError(f"need batch_rows >= 1, context_tokens >= 0 and max_limit >= 0, "
                         f"got {batch_rows}, {context_tokens}, {max_limit}")
    drafting = [0.0]  # seconds of the first k SLM steps (incremental: this runs once per round)
    for i in range(max_limit):
        drafting.append(drafting[-1] + profile.slm.decode_seconds(context_tokens + i, batch_rows))
    rates = [expected_tokens(acceptance_rate, k)
             / (drafting[k] + profile.llm.verify_seconds(k + 1, context_tokens, batch_rows))
             for k in range(max_limit + 1)]
    best = max(range(1, max_limit + 1), key=lambda k: (rates[k], -k), default=0)
    return best if best and rates[best] > rates[0] * (1.0 + min_gain) else 0


def drafting_can_pay(profile: CostProfile, batch_rows: int, context_tokens: int, max_limit: int) -> bool:
    """Whether drafts could pay at all here, even if every one were accepted (a = 1)."""
    return choose_draft_limit(profile, 1.0, batch_rows, context_tokens, max_limit) > 0


@dataclass(frozen=True)
class AcceptanceEstimate:
    """A running per-token acceptance rate: discounted accepted drafts over discounted examined ones.

    Each round multiplies both counts by `decay` and adds its accepted drafts and the drafts the LLM
    looked at (the accepted ones plus the first rejected one), so old rounds fade and the rate
    follows the text. It starts from a prior worth `weight` examined drafts, which fades the same way.
    """

    accepted: float = 0.9 * 4  # verified drafts end at the SLM's first uncertain token: most stand
    examined: float = 4.0
    decay: float = 0.9  # per round

    def __post_init__(self):
        if not 0.0 <= self.accepted <= self.examined or self.examined <= 0 or not 0.0 < self.decay <= 1.0:
            raise ValueError(f"acceptance estimate: need 0 <= accepted <= examined, examined > 0 and decay in "
                             f"(0, 1], got {self.accepted!r}, {self.examined!r}, {self.decay!r}")

    @classmethod
    def with_prior(cls, rate: float = 0.9, weight: float = 4.0, decay: float = 0.9) -> AcceptanceEstimate:
        """Start at `rate`, as if `weight` drafts had been examined at that rate."""
        if not 0.0 <= rate <= 1.0 or weight <= 0:
            raise ValueError(f"acceptance prior: need rate in [0, 1] and weight > 0, got {rate!r}, {weight!r}")
        return cls(rate * weight, weight, decay)

    @property
    def rate(self) -> float:
        return self.accepted / self.examined

    def observe(self, drafted: int, accepted: int) -> AcceptanceEstimate:
        """The estimate after a round that verified `drafted` drafts and accepted the first `accepted`."""
        if not 0 <= accepted <= drafted:
            raise ValueError(f"need 0 <= accepted <= drafted, got accepted={accepted}, drafted={drafted}")
        if drafted == 0:
            return self
        examined = accepted + (1 if accepted < drafted else 0)
        return AcceptanceEstimate(self.accepted * self.decay + accepted, self.examined * self.decay + examined,
                                  self.decay)

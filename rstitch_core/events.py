"""What the decoding loop yields: one event per emitted token, one per switch, and a final summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Literal

Source = Literal["slm", "llm"]
Direction = Literal["slm_to_llm", "llm_to_slm"]


class FinishReason(str, Enum):
    EOS = "eos"  # the model emitted an end-of-sequence token
    STOP = "stop"  # a stop string appeared (it is not part of the text)
    LENGTH = "length"  # max_new_tokens reached
    CONTEXT = "context"  # the models' context window is full


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One emitted token. `text` is the new text it completes (may be empty while a multi-byte
    character or a possible stop string is pending)."""

    index: int  # position among the generated tokens, from 0
    token_id: int
    text: str
    source: Source
    entropy: float  # normalized entropy of the source model's raw distribution at this position
    # Asked for (SamplingParams.logprobs): the token's log-probability under the distribution it was
    # accepted from (the LLM's wherever the LLM verified it) and the most likely alternatives.
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    """Control moved to the other model; it will partially prefill `prefill_tokens` unseen tokens."""

    direction: Direction
    position: int  # number of generated tokens when the switch happened
    prefill_tokens: int


@dataclass
class ModelStats:
    """Work done by one model for one request."""

    tokens: int = 0  # emitted tokens this model wrote
    forward_passes: int = 0
    forward_tokens: int = 0  # tokens fed through the model in total
    prefill_tokens: int = 0  # tokens fed in passes over more than the one token it just wrote
    seconds: float = 0.0  # wall time inside this model's forward passes
    rebuilds: int = 0  # turns that found no cache for the session and prefilled everything (serving)


@dataclass
class GenerationStats:
    """Per-request summary, shared by the CLI, the services' final message and the metrics."""

    prompt_tokens: int = 0
    slm: ModelStats = field(default_factory=ModelStats)
    llm: ModelStats = field(default_factory=ModelStats)
    switches_slm_to_llm: int = 0
    switches_llm_to_slm: int = 0
    discarded_tokens: int = 0  # SLM tokens thrown away at an SLM -> LLM switch
    drafted_tokens: int = 0  # speculative, verified: provisional SLM tokens the LLM verified
    accepted_tokens: int = 0  # ... of which the LLM kept (the rest were rolled back)
    undrafted_rounds: int = 0  # rounds a cost profile ran as plain LLM steps: drafts could not pay
    time_to_first_token: float = 0.0
    total_seconds: float = 0.0

    def model(self, source: Source) -> ModelStats:
        return self.slm if source == "slm" else self.llm

    @property
    def generated_tokens(self) -> int:
        return self.slm.tokens + self.llm.tokens

    @property
    def rolled_back_tokens(self) -> int:
        """Drafts the LLM rejected: both caches dropped them."""
        return self.drafted_tokens - self.accepted_tokens

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else 0.0

    @property
    def tokens_per_llm_pass(self) -> float:
        return self.generated_tokens / self.llm.forward_passes if self.llm.forward_passes else 0.0

    @property
    def llm_token_share(self) -> float:
        return self.llm.tokens / self.generated_tokens if self.generated_tokens else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["generated_tokens"] = self.generated_tokens
        out["llm_token_share"] = self.llm_token_share
        out["rolled_back_tokens"] = self.rolled_back_tokens
        out["acceptance_rate"] = self.acceptance_rate
        out["tokens_per_llm_pass"] = self.tokens_per_llm_pass
        return out


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """The last event of every generation."""

    reason: FinishReason
    text: str  # the whole emitted text
    token_ids: tuple[int, ...]
    stats: GenerationStats


Event = TokenEvent | SwitchEvent | FinishEvent

"""Per-request decoding state: the token sequence, each model's cache over it, and the stop rules."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Generator, Iterable

from rstitch_core.config import SamplingParams
from rstitch_core.events import (
    Direction,
    FinishEvent,
    FinishReason,
    GenerationStats,
    ModelStats,
    Source,
    SwitchEvent,
    TokenEvent,
)
from rstitch_core.models.backend import Cache, CacheSource, ForwardOutput, PassRequest
from rstitch_core.text import IncrementalDetokenizer, TextOutput


class SequenceStatus(Enum):
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class ModelState:
    """One model's view of one sequence: its KV cache (allocated on the model's first turn)."""

    source: Source
    runner: CacheSource  # a ModelBackend in-process, the worker's StepEngine served
    stats: ModelStats
    cache: Cache | None = None
    # (new tokens, cached tokens before) per forward pass: what a cost model prices a trajectory by
    passes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_cached(self) -> int:
        return self.cache.num_tokens if self.cache is not None else 0

    def step(self, token_ids: list[int], turn_start: bool, num_logits: int = 1,
             hidden: bool = False) -> Generator[PassRequest, ForwardOutput, ForwardOutput]:
        """Ask for one pass over exactly the tokens of `token_ids` this model has not seen (yielded
        to whoever runs passes: run_inline in-process, a worker's StepEngine served); returns its output.

        At the start of a turn that is the partial prefill (the whole prompt on the first turn);
        within a turn it is the one token the model just wrote.
        """
        if self.cache is None:
            self.cache = self.runner.new_cache()
        unseen = list(token_ids[self.num_cached:])
        self.passes.append((len(unseen), self.num_cached))
        out = yield PassRequest(self.cache, unseen, num_logits, hidden)
        self.stats.forward_passes += 1
        self.stats.forward_tokens += len(unseen)
        self.stats.prefill_tokens += len(unseen) if turn_start else 0
        self.stats.seconds += out.seconds
        return out

    def release(self) -> None:
        """Free the cache (a batched runner's slot, a llama.cpp sequence)."""
        if self.cache is not None:
            self.runner.release(self.cache)
        self.cache = None

    def rollback(self, num_tokens: int) -> None:
        """Keep only the first `num_tokens` cached positions (drop rejected tokens)."""
        if self.cache is not None:
            self.cache.crop(num_tokens)


@dataclass
class Sequence:
    """Prompt plus generated tokens, with the stop rules and the running stats of one request."""

    prompt_ids: list[int]
    sampling: SamplingParams
    eos_token_ids: frozenset[int]
    max_context: int
    output: TextOutput
    token_ids: list[int] = field(default_factory=list)  # prompt + generated
    status: SequenceStatus = SequenceStatus.RUNNING
    finish_reason: FinishReason | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    last_switch: int = 0  # num_generated at the last switch
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def create(cls, prompt_ids: list[int], sampling: SamplingParams, tokenizer,
               eos_token_ids: frozenset[int], max_context: int) -> Sequence:
        output = TextOutput(IncrementalDetokenizer(tokenizer, prompt_ids), sampling.stop)
        seq = cls(list(prompt_ids), sampling, eos_token_ids, max_context, output, list(prompt_ids))
        seq.stats.prompt_tokens = len(prompt_ids)
        return seq

    @property
    def running(self) -> bool:
        return self.status is SequenceStatus.RUNNING

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def room(self) -> int:
        """How many more tokens may still be generated (budget and context window)."""
        return min(self.sampling.max_new_tokens - self.num_generated, self.max_context - len(self.token_ids))

    def adjust(self, sampler, logits, drafts: list[int] | tuple[int, ...] = ()):
        """logits: [N, V] raw at the last N positions of token_ids + drafts -> [N, V] with the
        request's logits controls (Sampler.adjust)."""
        if not self.sampling.controls_logits:  # the common case: no history copy on every pass
            return logits
        return sampler.adjust(logits, self.token_ids + list(drafts), len(self.prompt_ids), self.eos_token_ids)

    def ends(self, token_id: int) -> bool:
        """Whether `token_id` ends the sequence (an EOS id, unless the request ignores EOS)."""
        return token_id in self.eos_token_ids and not self.sampling.ignore_eos

    def append(self, token_id: int, source: Source, entropy: float, logprob: float | None = None,
               top_logprobs: tuple | None = None) -> TokenEvent:
        """Emit one token and apply the stop rules (EOS, stop string, budget, context)."""
        index = self.num_generated
        self.token_ids.append(token_id)
        self.stats.model(source).tokens += 1
        if index == 0:
            self.stats.time_to_first_token = time.perf_counter() - self.started
        text, stopped = self.output.push(token_id)
        reason = (FinishReason.EOS if self.ends(token_id)
                  else FinishReason.STOP if stopped
                  else FinishReason.LENGTH if self.num_generated >= self.sampling.max_new_tokens
                  else FinishReason.CONTEXT if len(self.token_ids) >= self.max_context
                  else None)
        if reason is not None:
            self.status, self.finish_reason = SequenceStatus.FINISHED, reason
            if reason is not FinishReason.STOP:
                text += self.output.finish()
        return TokenEvent(index, token_id, text, source, entropy, logprob, top_logprobs)

    def switch(self, direction: Direction, num_cached: int, discarded: int = 0) -> SwitchEvent:
        """Record a hand-over of the lead; the target, whose cache holds `num_cached` positions, will
        partially prefill every token after them. `discarded`: SLM tokens thrown away (rstitch)."""
        if direction == "slm_to_llm":
            self.stats.switches_slm_to_llm += 1
        else:
            self.stats.switches_llm_to_slm += 1
        self.stats.discarded_tokens += discarded
        self.last_switch = self.num_generated
        return SwitchEvent(direction, self.num_generated, len(self.token_ids) - num_cached)

    def extend(self, token_ids: Iterable[int]) -> None:
        """Append tokens written elsewhere (a worker's mirror of the sequence catching up): the
        text and stop state advance, no event or stats. They never end the sequence: whoever
        wrote them already applied the stop rules."""
        for token_id in token_ids:
            self.token_ids.append(token_id)
            self.output.push(token_id)

    def finish(self) -> FinishEvent:
        self.stats.total_seconds = time.perf_counter() - self.started
        assert self.finish_reason is not None
        return FinishEvent(self.finish_reason, self.output.text,
                           tuple(self.token_ids[len(self.prompt_ids):]), self.stats)

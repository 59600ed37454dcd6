"""The engine: a validated SLM/LLM pair and one generate() entry point for every policy."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from rstitch_core.config import RoutingParams, SamplingParams, check_router
from rstitch_core.events import Event, Source
from rstitch_core.generation import Generation  # re-exported: it used to live here
from rstitch_core.logits_processors import prompt_logprobs
from rstitch_core.models.backend import ModelBackend
from rstitch_core.models.loading import check_pair, load_model
from rstitch_core.models.prefill import PrefillSpec
from rstitch_core.policies.loop import DraftControl, run_local
from rstitch_core.prompts import check_prompt_ids, check_request, encode_prompt
from rstitch_core.router.switch import SwitchRouter
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence


class Engine:
    """Holds the SLM and the LLM (same tokenizer, checked) and decodes requests one at a time."""

    def __init__(self, slm: ModelBackend, llm: ModelBackend):
        check_pair(slm, llm)
        self.slm, self.llm = slm, llm
        self.tokenizer = llm.tokenizer
        self.max_context = min(slm.max_context, llm.max_context)
        # Makes each request's cost-aware draft control (None: drafts run to the policy's limit).
        self.draft_control: Callable[[RoutingParams], DraftControl | None] | None = None

    @classmethod
    def load(cls, slm: str, llm: str, dtype: str = "float32", device: str = "cpu",
             llm_device: str | None = None, prefill: PrefillSpec | None = None, backend: str = "torch") -> Engine:
        """Load both models (the LLM on `llm_device` if given, else `device`) on `backend` (torch or
        llamacpp) and check the pair; `prefill` (torch): both models run long passes on a copy in its
        dtype (models/prefill.py)."""
        return cls(load_model(slm, dtype, device, name="slm", prefill=prefill, backend=backend),
                   load_model(llm, dtype, llm_device or device, name="llm", prefill=prefill, backend=backend))

    def encode(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Prompt text or chat messages -> token ids; rejects prompts that fill the context window."""
        ids = encode_prompt(self.tokenizer, prompt, messages)
        self.check_prompt_ids(ids)
        return ids

    @property
    def vocab_size(self) -> int:
        return min(self.slm.vocab_size, self.llm.vocab_size)

    def check_prompt_ids(self, ids: Iterable[int]) -> None:
        check_prompt_ids(ids, self.max_context, self.vocab_size)

    def prompt_logprobs(self, prompt_ids: Iterable[int], top: int = 0) -> list:
        """The LLM's log-probability of each prompt token given those before it, with its `top`
        alternatives (None for the first token): what an echoed completion reports."""
        ids = [int(t) for t in prompt_ids]
        self.check_prompt_ids(ids)
        return prompt_logprobs(self.llm, ids, top)

    def generate(self, prompt: str | None = None, messages: list[dict] | None = None, *,
                 prompt_ids: Iterable[int] | None = None,
                 sampling: SamplingParams = SamplingParams(),
                 routing: RoutingParams = RoutingParams(),
                 router: SwitchRouter | None = None) -> Iterator[Event]:
        """Validate the request now (ValueError), then return an iterator of events: TokenEvent per
        emitted token, SwitchEvent per switch, and a FinishEvent last.

        Give exactly one of `prompt`, `messages` or `prompt_ids`. Caches are allocated lazily on a
        model's first turn and released when the iterator finishes or is closed.
        """
        if prompt_ids is not None:
            if prompt is not None or messages is not None:
                raise ValueError("give exactly one of a prompt, chat messages or prompt token ids")
            ids = [int(t) for t in prompt_ids]
        else:
            ids = encode_prompt(self.tokenizer, prompt, messages)
        check_request(ids, sampling.max_new_tokens, self.max_context, self.vocab_size)  # as served
        check_router(routing.policy, router is not None)
        return self._run(ids, sampling, routing, router)

    def rollout(self, prompt_ids: Iterable[int], sampling: SamplingParams, routing: RoutingParams,
                router: SwitchRouter | None = None) -> tuple[Generation, dict[Source, list[tuple[int, int]]]]:
        """Run one generation to the end; also return each model's forward passes as
        (new tokens, cached tokens) so a cost model can price the trajectory (router training)."""
        ids = [int(t) for t in prompt_ids]
        self.check_prompt_ids(ids)
        check_router(routing.policy, router is not None)
        passes: dict[Source, list[tuple[int, int]]] = {}
        return Generation.collect(self._run(ids, sampling, routing, router, passes)), passes

    def _run(self, ids: list[int], sampling: SamplingParams, routing: RoutingParams,
             router: SwitchRouter | None, passes: dict | None = None) -> Iterator[Event]:
        seq = Sequence.create(ids, sampling, self.tokenizer, self.llm.eos_token_ids, self.max_context)
        slm = ModelState("slm", self.slm, seq.stats.slm)
        llm = ModelState("llm", self.llm, seq.stats.llm)
        if passes is not None:
            passes.update(slm=slm.passes, llm=llm.passes)
        sampler = Sampler(sampling)
        try:
            control = self.draft_control(routing) if self.draft_control is not None else None
            yield from run_local(seq, slm, llm, routing, sampler, router, control)
        finally:
            slm.release()
            llm.release()

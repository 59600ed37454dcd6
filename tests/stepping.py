"""Drive many requests' policy loops through one StepEngine per model, stepped by hand: what two
workers and a front end do served, in one thread, with every batch decided by the engines alone."""

from __future__ import annotations

from dataclasses import dataclass, field

from rstitch_core import Engine, RoutingParams, SamplingParams
from rstitch_core.events import ModelStats, TokenEvent
from rstitch_core.models.step_engine import Budget, StepEngine
from rstitch_core.policies.loop import Handoff, Rollback, Steps, decode
from rstitch_core.policies.phases import run_phase
from rstitch_core.sampling import Sampler
from rstitch_core.sequence import ModelState, Sequence


@dataclass
class Request:
    seq: Sequence
    states: dict[str, ModelState]
    steps: Steps
    sampler: Sampler
    tokens: list[TokenEvent] = field(default_factory=list)
    ready: bool = True  # its loop may advance (no op of it is in an engine)
    finished: bool = False
    error: BaseException | None = None

    @property
    def output(self) -> tuple[list[int], list[str]]:
        return [t.token_id for t in self.tokens], [t.source for t in self.tokens]


def step_engines(engine: Engine, max_rows: int = 16, max_tokens: int = 8192) -> dict[str, StepEngine]:
    return {"slm": StepEngine(engine.slm, Budget(max_rows, max_tokens)),
            "llm": StepEngine(engine.llm, Budget(max_rows, max_tokens))}


def run_together(engine: Engine, engines: dict[str, StepEngine], prompts: list[str], budgets: list[int],
                 routing: RoutingParams) -> list[Request]:
    """Every request decoded to the end, its ops run by `engines` (stepped here, no thread)."""
    requests = []
    for prompt, budget in zip(prompts, budgets):
        seq = Sequence.create(engine.encode(prompt), SamplingParams(max_new_tokens=budget), engine.tokenizer,
                              engine.llm.eos_token_ids, engine.max_context)
        states = {m: ModelState(m, engines[m], ModelStats()) for m in ("slm", "llm")}
        requests.append(Request(seq, states, Steps(decode(seq, routing)), Sampler(seq.sampling)))
    iters = {id(r): iter(r.steps) for r in requests}
    while not all(r.finished for r in requests):
        for r in requests:
            if r.error is not None:
                raise r.error
            if r.ready and not r.finished:
                _advance(r, iters[id(r)], engines)
        for e in engines.values():
            e.step()
    for r in requests:
        for state in r.states.values():
            state.release()
    return requests


def _advance(r: Request, steps, engines: dict[str, StepEngine]) -> None:
    """Run r's loop up to its next op (submitted to that model's engine) or its end."""
    for step in steps:
        if isinstance(step, Rollback):
            for state in r.states.values():
                state.rollback(step.num_tokens)
        elif isinstance(step, Handoff):
            r.seq.switch(step.direction, r.states[step.target].num_cached, step.discarded)
        else:
            phase = run_phase(step, r.seq, r.states[step.model], r.sampler)
            r.ready = False
            engines[step.model].submit(phase, on_event=r.tokens.append, on_end=lambda v, r=r: _ended(r, v))
            return
    r.finished = True


def _ended(r: Request, value) -> None:
    if isinstance(value, BaseException):
        r.error = value  # raised by run_together (an on_end that raises is only logged by the engine)
    r.steps.result, r.ready = value, True

"""The stepped engine: schedule -> run -> postprocess over every session's waiting pass.

Batching here is decided by the engine alone (the tests step it by hand, or wait on its futures):
the counters it keeps are exact, whatever the machine's speed."""

from __future__ import annotations

import threading

import pytest
import torch

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.events import ModelStats
from rstitch_core.models.backend import PassRequest
from rstitch_core.models.step_engine import DROPPED, Budget, StepEngine, run_inline
from rstitch_core.sequence import ModelState
from stepping import run_together, step_engines

PROMPTS = ["Natalia sold clips", "def add(a, b):", "the quick brown fox jumps", "Step 1: multiply.",
           "naïve café", "12 + 30 = 42.", "print(add(2, 3))", "The answer is"]
BUDGETS = [40, 25, 60, 10, 35, 50, 15, 45]


def greedy_phase(state: ModelState, prompt: list[int], n: int):
    """A phase that decodes `n` tokens greedily, one pass each; returns them."""
    tokens = list(prompt)
    for i in range(n):
        out = yield from state.step(tokens, turn_start=i == 0)
        tokens.append(int(out.logits[-1].argmax()))
    return tokens[len(prompt):]


def ended(results: dict, key):
    return lambda value: results.__setitem__(key, value)


@pytest.mark.parametrize("policy", ["rstitch", "llm", "slm", "speculative", "verified"])
def test_requests_stepped_together_equal_each_alone(engine, policy):
    """Eight requests with different prompts and budgets (they leave at different times and,
    stitching, join each model's steps at different times) through one engine per model: each
    equals its in-process run, and the steps really were shared."""
    routing = RoutingParams(policy=policy, threshold=0.5, draft_tokens=4)
    want = [Generation.collect(engine.generate(p, sampling=SamplingParams(max_new_tokens=n), routing=routing))
            for p, n in zip(PROMPTS, BUDGETS)]
    engines = step_engines(engine)
    got = run_together(engine, engines, PROMPTS, BUDGETS, routing)
    for g, w in zip(got, want):
        assert g.output == (list(w.token_ids), list(w.sources))
        assert g.seq.stats.switches_slm_to_llm == w.stats.switches_slm_to_llm
    for e in engines.values():
        assert e.slots_in_use == 0  # every cache returned
    first = engines["slm" if policy != "llm" else "llm"].stats
    assert first.max_rows == len(PROMPTS)  # the first pass of every request shared one step
    assert sum(e.stats.rows for e in engines.values()) / sum(e.stats.steps for e in engines.values()) > 1.5


def test_the_budget_defers_passes_to_the_next_step_oldest_first(engine):
    e = StepEngine(engine.slm, Budget(max_rows=2, max_tokens=12))
    results: dict = {}
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17]]
    for i, p in enumerate(prompts):
        e.submit(greedy_phase(ModelState("slm", e, ModelStats()), p, 2), lambda _: None, ended(results, i))
    assert e.step() == 2  # rows: 5 + 5 tokens fit, the third would be a third row
    assert e.step() == 2  # the deferred prefill first, then one decode (3 + 1 tokens)
    assert e.stats.deferred >= 1
    while e.has_work:
        e.step()
    for i, p in enumerate(prompts):  # batched or not, the same tokens as passes run alone
        alone = ModelState("slm", engine.slm, ModelStats())
        assert results[i] == list(run_to_end(greedy_phase(alone, p, 2), engine.slm))
        alone.release()


def run_to_end(phase, backend):
    gen = run_inline(phase, backend)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_one_long_pass_over_the_token_budget_runs_alone(engine):
    e = StepEngine(engine.slm, Budget(max_rows=8, max_tokens=4))
    results: dict = {}
    e.submit(greedy_phase(ModelState("slm", e, ModelStats()), list(range(5, 25)), 1), lambda _: None,
             ended(results, 0))
    assert e.step() == 1 and e.stats.tokens == 20 and len(results[0]) == 1


def test_a_cancelled_or_released_task_is_dropped_and_its_cache_can_be_freed(engine):
    e = StepEngine(engine.llm, Budget(4))
    results: dict = {}
    released = threading.Event()
    states = [ModelState("llm", e, ModelStats()) for _ in range(3)]
    tasks = [e.submit(greedy_phase(states[0], [5, 6, 7], 50), lambda _: None, ended(results, 0)),
             e.submit(greedy_phase(states[1], [5, 6, 7], 50), lambda _: None, ended(results, 1),
                      alive=lambda: not released.is_set()),
             e.submit(greedy_phase(states[2], [5, 6, 7], 3), lambda _: None, ended(results, 2))]
    e.step()
    e.cancel(tasks[0])
    released.set()
    while e.has_work:
        e.step()
    assert results[0] is DROPPED and results[1] is DROPPED and len(results[2]) == 3
    assert all(t.done.done() for t in tasks)
    for s in states:
        s.release()
    assert e.slots_in_use == 0


def test_a_failing_pass_fails_only_its_step_and_a_bad_request_only_its_task(engine):
    e = StepEngine(engine.slm, Budget(4))
    results: dict = {}

    def bad_phase(state):
        yield PassRequest(state.runner.new_cache(), [], 1)  # no token: refused before any pass

    good = ModelState("slm", e, ModelStats())
    e.submit(bad_phase(good), lambda _: None, ended(results, "bad"))
    e.submit(greedy_phase(good, [5, 6], 2), lambda _: None, ended(results, "good"))
    while e.has_work:
        e.step()
    assert isinstance(results["bad"], ValueError) and "at least one new token" in str(results["bad"])
    assert len(results["good"]) == 2


def test_on_its_own_thread_the_engine_runs_what_is_submitted(engine):
    steps = []
    e = StepEngine(engine.slm, Budget(4), on_step=lambda *a: steps.append(a)).start()
    try:
        results: dict = {}
        state = ModelState("slm", e, ModelStats())
        task = e.submit(greedy_phase(state, [5, 6, 7], 2), lambda _: None, ended(results, 0))
        task.done.result(timeout=60)
        state.release()
    finally:
        e.close()
    assert len(results[0]) == 2
    assert [(rows, tokens) for rows, tokens, _ in steps] == [(1, 3), (1, 1)] and all(s > 0 for *_, s in steps)
    assert e.slots_in_use == 0
    with pytest.raises(RuntimeError, match="closed"):
        e.submit(greedy_phase(state, [5], 1), lambda _: None, lambda _: None)


def test_unbatched_the_engine_runs_one_pass_per_step(engine):
    e = StepEngine(engine.slm, Budget(8), batched=False)
    results: dict = {}
    for i in range(3):
        e.submit(greedy_phase(ModelState("slm", e, ModelStats()), [5 + i, 6], 2), lambda _: None, ended(results, i))
    while e.has_work:
        assert e.step() == 1
    assert e.stats.steps == 6 and e.slots_in_use is None


def test_budget_fields_are_validated():
    with pytest.raises(ValueError, match="max_rows must be an integer >= 1, got 0"):
        Budget(0)
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 1, got True"):
        Budget(4, True)


def test_steps_match_batch_one_logits(engine):
    """The engine hands each phase the logits its own pass would have given."""
    e = StepEngine(engine.llm, Budget(8))
    seen: dict = {}

    def record(state, prompt, key):
        out = yield from state.step(prompt, turn_start=True, num_logits=2)
        seen[key] = out.logits

    for i, p in enumerate([[5, 6, 7], [9, 10, 11, 12, 13]]):
        e.submit(record(ModelState("llm", e, ModelStats()), p, i), lambda _: None, lambda _: None)
    e.step()
    for i, p in enumerate([[5, 6, 7], [9, 10, 11, 12, 13]]):
        want = engine.llm.forward(engine.llm.new_cache(), p, num_logits=2).logits
        torch.testing.assert_close(seen[i], want, rtol=1e-4, atol=1e-4)

"""Batched passes: many sequences through one BatchedRunner give the batch-1 engine's output."""

from __future__ import annotations

import threading

import pytest
import torch

from rstitch_core import Engine, Generation, RoutingParams, SamplingParams
from rstitch_core.models.batched import PassRequest, forward_batch, new_slot_kv
from rstitch_core.models.scheduler import BatchedRunner

PROMPTS = ["Natalia sold clips", "def add(a, b):", "the quick brown fox jumps", "Step 1: multiply.",
           "naïve café", "12 + 30 = 42.", "print(add(2, 3))", "The answer is"]


def test_a_batched_pass_matches_batch_one_passes(engine):
    runner = engine.llm
    kv = new_slot_kv(runner.model)
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, runner.vocab_size, (n,), generator=gen).tolist() for n in (7, 12, 5, 20)]
    caches = [kv.allocate() for _ in seqs]
    # prefill of different lengths, then one decode, then a 3-token pass with 3 logits
    steps = [lambda s: s[:-4], lambda s: s[-4:-3], lambda s: s[-3:]]
    refs = [runner.new_cache() for _ in seqs]
    for k, step in enumerate(steps):
        n_logits = 3 if k == 2 else 1
        got = forward_batch(runner.model, kv, [PassRequest(c, step(s), n_logits, hidden=True)
                                               for c, s in zip(caches, seqs)])
        for (logits, hidden), ref, s in zip(got, refs, seqs):
            want = runner.forward(ref, step(s), num_logits=n_logits, hidden=True)
            torch.testing.assert_close(logits, want.logits, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(hidden, want.hidden, rtol=1e-4, atol=1e-4)
    assert [c.num_tokens for c in caches] == [len(s) for s in seqs]


def test_rollback_and_slot_reuse(engine):
    runner = engine.slm
    kv = new_slot_kv(runner.model)
    a, b = kv.allocate(), kv.allocate()
    forward_batch(runner.model, kv, [PassRequest(a, [5, 6, 7, 8]), PassRequest(b, [9, 10])])
    a.crop(2)  # drop positions 2, 3: the next pass overwrites them
    got = forward_batch(runner.model, kv, [PassRequest(a, [11])])[0][0]
    ref = runner.new_cache()
    torch.testing.assert_close(got, runner.forward(ref, [5, 6, 11]).logits, rtol=1e-4, atol=1e-4)
    slot = b.slot
    b.release()
    assert kv.allocate().slot == slot


def test_slots_and_capacity_grow_keeping_what_is_cached(engine):
    runner = engine.slm
    kv = new_slot_kv(runner.model)
    first = kv.allocate()
    forward_batch(runner.model, kv, [PassRequest(first, list(range(1, 40)))])
    others = [kv.allocate() for _ in range(4)]  # slots double 1 -> 2 -> 4 -> 8
    forward_batch(runner.model, kv, [PassRequest(c, [3] * 300) for c in others])  # capacity 256 -> 512
    assert kv.slots == 8 and kv.capacity == 512
    got = forward_batch(runner.model, kv, [PassRequest(first, [40])])[0][0]
    ref = runner.new_cache()
    torch.testing.assert_close(got, runner.forward(ref, list(range(1, 41))).logits, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def batched(engine):
    slm, llm = BatchedRunner(engine.slm, linger_s=0.05), BatchedRunner(engine.llm, linger_s=0.05)
    yield Engine(slm, llm)
    slm.close()
    llm.close()


@pytest.mark.parametrize("policy", ["rstitch", "llm", "slm", "speculative"])
def test_concurrent_batched_greedy_equals_batch_one(engine, batched, policy):
    """Eight requests with different prompts and budgets (so they leave at different times and,
    stitching, join each model's passes at different times) run concurrently through the batched
    runners; each equals its batch-1 run."""
    budgets = [40, 25, 60, 10, 35, 50, 15, 45]
    routing = RoutingParams(policy=policy, threshold=0.5)
    want = [Generation.collect(engine.generate(p, sampling=SamplingParams(max_new_tokens=n), routing=routing))
            for p, n in zip(PROMPTS, budgets)]
    got: list = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def run(i):
        events = batched.generate(PROMPTS[i], sampling=SamplingParams(max_new_tokens=budgets[i]), routing=routing)
        start.wait(timeout=60)  # all arrive together (tokenized, no pass yet): a pass can be shared
        got[i] = Generation.collect(events)

    steps_before = batched.slm.stats.steps + batched.llm.stats.steps
    rows_before = batched.slm.stats.rows + batched.llm.stats.rows
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert (g.token_ids, g.sources) == (w.token_ids, w.sources)
        assert g.stats.switches_slm_to_llm == w.stats.switches_slm_to_llm
    steps = batched.slm.stats.steps + batched.llm.stats.steps - steps_before
    rows = batched.slm.stats.rows + batched.llm.stats.rows - rows_before
    assert rows / steps > 1.5  # passes really were shared
    assert batched.slm.pool.slots_in_use == 0 and batched.llm.pool.slots_in_use == 0  # every slot returned


def test_on_step_reports_each_pass(engine):
    steps = []
    runner = BatchedRunner(engine.slm, linger_s=0.0, on_step=lambda *a: steps.append(a))
    try:
        cache = runner.new_cache()
        runner.forward(cache, [5, 6, 7])
        runner.forward(cache, [8])
        runner.release(cache)
    finally:
        runner.close()
    assert [(rows, tokens) for rows, tokens, _ in steps] == [(1, 3), (1, 1)] and all(s > 0 for *_, s in steps)
    assert runner.pool.slots_in_use == 0
    with pytest.raises(ValueError, match="released"):
        runner.forward(cache, [1])

"""Batched passes (torch): many sequences' rows in one pass give each sequence's batch-1 logits.
The engine that schedules them is tested in test_step_engine.py."""

from __future__ import annotations

import torch

from rstitch_core.models.batched import PassRequest, forward_batch, new_slot_kv


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

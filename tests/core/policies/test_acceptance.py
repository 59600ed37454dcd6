"""The acceptance rule as one tensor expression gives what the draft-by-draft rule gives: the same
verdict, the same token and the request's generator left in the same state, for every rule."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.reference import draft_by_draft_acceptance
from rstitch_core.config import SamplingParams
from rstitch_core.policies.acceptance import Draft, accept_prefix
from rstitch_core.sampling import Sampler


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 6), vocab=st.sampled_from([5, 8, 30]),
       slm_narrower=st.booleans(), greedy=st.booleans(), temperature=st.sampled_from([0.5, 1.0, 1.5]),
       top_k=st.sampled_from([0, 3]), relaxed_ratio=st.sampled_from([None, 0.0, 0.3, 1.0]),
       out_of_vocab=st.booleans(), scale=st.sampled_from([0.5, 2.0, 6.0]))
def test_one_expression_equals_the_draft_by_draft_rule(seed, n, vocab, slm_narrower, greedy, temperature, top_k,
                                                      relaxed_ratio, out_of_vocab, scale):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n + 1, vocab, generator=gen) * scale  # [n+1, V]
    slm_vocab = vocab - 2 if slm_narrower else vocab
    q = torch.softmax(torch.randn(n, slm_vocab, generator=gen) * 2, -1)  # [n, V_slm]
    # half the drafts are the LLM's own argmax (they stand), the rest random
    tokens = [int(logits[i].argmax()) if torch.rand((), generator=gen) < 0.5
              else int(torch.randint(slm_vocab, (), generator=gen)) for i in range(n)]
    if out_of_vocab and n:
        tokens[0] = vocab + 1
    sampling = SamplingParams(temperature=0.0 if greedy else temperature, top_k=top_k, seed=seed, max_new_tokens=8)
    old, new = Sampler(sampling), Sampler(sampling)
    want = draft_by_draft_acceptance(tokens, q, logits, old, relaxed_ratio)
    rule = "exact" if relaxed_ratio is None else "relaxed"
    got = accept_prefix(Draft(tokens, [0.0] * n, None if greedy or n == 0 else q), logits, new, rule,
                        1.0 if relaxed_ratio is None else relaxed_ratio)
    assert got == want
    assert torch.equal(old.get_state(), new.get_state())

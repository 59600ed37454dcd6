"""Stop rules: EOS, max_new_tokens, stop strings (not emitted), context window."""

import pytest

from rstitch_core import Engine, FinishReason, Generation, RoutingParams, SamplingParams

PROMPT = "the quick brown fox"


def gen(engine, policy="rstitch", **sampling):
    return Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(**sampling),
                                              routing=RoutingParams(policy=policy, threshold=0.5)))


@pytest.mark.parametrize("policy", ["rstitch", "llm", "slm", "speculative"])
def test_max_new_tokens(engine, policy):
    g = gen(engine, policy, max_new_tokens=7)
    if g.finish_reason is FinishReason.LENGTH:
        assert len(g.token_ids) == 7
    else:
        assert g.finish_reason is FinishReason.EOS and len(g.token_ids) <= 7


@pytest.mark.parametrize("policy", ["rstitch", "llm", "slm", "speculative"])
def test_eos_ends_the_stream_and_is_the_last_token(engine, policy):
    free = gen(engine, policy, max_new_tokens=30)
    eos = free.token_ids[5]  # declare a token the pair emits as EOS
    for runner in (engine.slm, engine.llm):
        runner.eos_token_ids, saved = frozenset({eos}), runner.eos_token_ids
    try:
        stopped = Generation.collect(Engine(engine.slm, engine.llm).generate(
            PROMPT, sampling=SamplingParams(max_new_tokens=30), routing=RoutingParams(policy=policy, threshold=0.5)))
    finally:
        engine.slm.eos_token_ids = engine.llm.eos_token_ids = saved
    first = free.token_ids.index(eos)
    assert stopped.finish_reason is FinishReason.EOS
    assert stopped.token_ids == free.token_ids[:first + 1]


@pytest.mark.parametrize("policy", ["rstitch", "speculative"])
def test_stop_string_ends_the_stream_and_is_not_emitted(engine, policy):
    free = gen(engine, policy, max_new_tokens=30)
    text = free.text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert len(stop) == 3
    g = gen(engine, policy, max_new_tokens=30, stop=(stop,))
    assert g.finish_reason is FinishReason.STOP
    assert g.text == text[:text.index(stop)] and stop not in g.text
    assert g.token_ids == free.token_ids[:len(g.token_ids)]


def test_context_window_ends_generation(pair_dirs, tmp_path):
    from rstitch_core import ModelRunner
    from tiny_models import build_model, build_tokenizer

    tok = build_tokenizer()
    small = [ModelRunner(build_model(len(tok), seed=s, max_positions=24, eos_token_id=-1), tok, n)
             for s, n in ((0, "slm"), (1, "llm"))]
    engine = Engine(*small)
    ids = engine.encode(PROMPT)
    g = Generation.collect(engine.generate(prompt_ids=ids, sampling=SamplingParams(max_new_tokens=24),
                                           routing=RoutingParams(policy="speculative")))
    assert g.finish_reason is FinishReason.CONTEXT and len(ids) + len(g.token_ids) == 24
    with pytest.raises(ValueError, match="context window holds 24"):
        engine.generate(prompt_ids=list(range(3, 27)), sampling=SamplingParams(max_new_tokens=24))
    # The same budget check as served: a budget the window could never hold is refused up front.
    with pytest.raises(ValueError, match=r"sampling.max_new_tokens must be <= 24 \(the context window\), got 100"):
        engine.generate(prompt_ids=ids, sampling=SamplingParams(max_new_tokens=100))

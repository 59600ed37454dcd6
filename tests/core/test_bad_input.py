"""Every request error a user can cause is a ValueError raised before anything is allocated."""

import math

import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams


def test_empty_prompt_and_messages(engine):
    for kwargs in (dict(prompt=""), dict(prompt="   "), dict(messages=[]),
                   dict(messages=[{"role": "user", "content": ""}])):
        with pytest.raises(ValueError, match="prompt|messages"):
            engine.generate(**kwargs)
    with pytest.raises(ValueError, match="exactly one"):
        engine.generate()
    with pytest.raises(ValueError, match="exactly one"):
        engine.generate("hi", [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("messages, field", [
    ([{"role": "user"}], r"messages\[0\]"),
    ([{"role": "user", "content": 3}], r"messages\[0\].content"),
    ([{"role": "", "content": "x"}], r"messages\[0\].role"),
    (["hello"], r"messages\[0\]"),
    ([{"role": "user", "content": "x", "name": "bob"}], r"messages\[0\]"),
])
def test_malformed_messages_name_the_field(engine, messages, field):
    with pytest.raises(ValueError, match=field):
        engine.generate(messages=messages)


def test_prompt_longer_than_the_context(engine):
    too_long = "the quick brown fox " * 400
    with pytest.raises(ValueError, match=r"the prompt has \d+ tokens but the context window holds 512"):
        engine.generate(too_long)


@pytest.mark.parametrize("make", [
    lambda: RoutingParams(policy="greedy-ish"), lambda: RoutingParams(threshold=math.nan),
    lambda: RoutingParams(threshold=-0.5), lambda: RoutingParams(threshold=2),
    lambda: SamplingParams(max_new_tokens=0),
])
def test_bad_params(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("policy", ["llm", "rstitch", "speculative"])
def test_router_only_with_rstitch_plus(engine, policy):
    with pytest.raises(ValueError, match="router only applies to the rstitch\\+ policy"):
        engine.generate("hi", routing=RoutingParams(policy=policy), router=lambda x: True)


def test_rstitch_plus_needs_a_router(engine):
    with pytest.raises(ValueError, match="rstitch\\+ policy needs a router"):
        engine.generate("hi", routing=RoutingParams(policy="rstitch+"))


def test_out_of_vocabulary_prompt_ids(engine):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate(prompt_ids=[1, 2, 10**6])


def test_chat_messages_use_the_template(engine):
    g = Generation.collect(engine.generate(messages=[{"role": "user", "content": "add 2 and 3"}],
                                           sampling=SamplingParams(max_new_tokens=4)))
    ids = engine.encode(messages=[{"role": "user", "content": "add 2 and 3"}])
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nadd 2 and 3<|im_end|>") and text.endswith("assistant\n")
    assert g.stats.prompt_tokens == len(ids) and len(g.token_ids) >= 1

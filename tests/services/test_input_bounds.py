"""Inputs a client can make hostile: every content form counted before tokenizing, text a tokenizer
cannot take, JSON nested without end, booleans for numbers, temperatures that overflow; and long
inputs tokenized off the front end's event loop, so other streams keep their pace."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
import torch

from rstitch.v1 import rstitch_pb2 as pb
from rstitch.v1 import rstitch_pb2_grpc
from rstitch_core.config import MIN_TEMPERATURE, SamplingParams
from rstitch_core.sampling import Sampler
from services import limits
from services.openai_protocol import FieldError, parse_openai
from serving import HOLD_PROMPT, HOLD_TOKENS, LocalFrontend

OVER = limits.MAX_INPUT_CHARS + 1


def parse(body: dict | bytes, endpoint: str = "chat"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_openai(raw, endpoint, "m", 512, 0.02, None)


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": "x" * OVER}],  # the form that once passed the check
    [{"type": "text", "text": "x" * (OVER // 2)}, {"type": "text", "text": "y" * (OVER // 2 + 1)}],
    "x" * OVER,
])
def test_every_content_form_counts_toward_the_input_bound(content):
    with pytest.raises(FieldError, match=f"at most {limits.MAX_INPUT_CHARS} characters, got {OVER + 4}") as err:  # + the role
        parse({"messages": [{"role": "user", "content": content}]})
    assert err.value.param == "messages"


def test_a_token_id_prompt_counts_toward_the_bound_too():
    with pytest.raises(FieldError, match=f"prompt must be at most {limits.MAX_INPUT_CHARS} characters, got {OVER}"):
        parse({"prompt": [1] * OVER}, "completion")


def test_input_size_counts_strings_parts_and_token_ids():
    assert limits.input_size("abc") == 3
    assert limits.input_size([{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]) == 3
    assert limits.input_size([1, 2, 3, 4]) == 4 and limits.input_size([[1, 2], "ab"]) == 4
    with pytest.raises(ValueError, match="prompt must be at most"):
        limits.check_prompt(list(range(OVER)))


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "ab\ud800"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}, "messages[0].content"),
    ({"prompt": "ab\ud800"}, "prompt"),
    ({"prompt": "ab", "stop": ["\ud800"]}, "stop[0]"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(body, param):
    with pytest.raises(FieldError, match="lone surrogate") as err:
        parse(body, "completion" if "prompt" in body else "chat")
    assert err.value.param == param


def test_deeply_nested_json_and_n_true_are_400s():
    with pytest.raises(FieldError, match="nested too deeply"):
        parse(b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(FieldError, match="n must be an integer") as err:
        parse({"messages": [{"role": "user", "content": "hi"}], "n": True})
    assert err.value.param == "n"
    with pytest.raises(FieldError, match="temperature must be a number, got true"):
        parse({"messages": [{"role": "user", "content": "hi"}], "temperature": True})


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, MIN_TEMPERATURE / 2])
def test_a_temperature_below_the_floor_is_greedy(temperature):
    params = SamplingParams(temperature=temperature)
    assert params.greedy
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    probs = Sampler(params).probs(logits)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # argmax, no overflow into NaN
    assert not SamplingParams(temperature=MIN_TEMPERATURE).greedy


@pytest.fixture(scope="module")
def frontend(pair_dirs):
    f = LocalFrontend(*map(str, pair_dirs))
    yield f
    f.close()


def test_long_inputs_are_tokenized_off_the_event_loop(frontend):
    # Characters the tiny tokenizer never merges: about two tokens each, the most a bounded input holds.
    long_prompt = "é" * (limits.MAX_INPUT_CHARS - 1)
    started = time.perf_counter()
    tokens = len(frontend.frontend.tokenizer(long_prompt)["input_ids"])
    tokenize_s = time.perf_counter() - started
    streams, enough, burst_over = [], threading.Event(), threading.Event()
    channel = grpc.insecure_channel(frontend.address)
    stub = rstitch_pb2_grpc.RStitchStub(channel)

    def hold():  # one held stream after another, until the burst is over: the pace is always measured
        request = pb.GenerateRequest(prompt=HOLD_PROMPT, sampling=pb.SamplingParams(max_new_tokens=HOLD_TOKENS))
        while not burst_over.is_set():
            streams.append([])
            for _ in stub.Generate(request):
                streams[-1].append(time.perf_counter())
                if len(streams[-1]) >= 2:
                    enough.set()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert enough.wait(120)
    burst_started = time.perf_counter()
    errors = []

    def long_request():
        try:
            list(stub.Generate(pb.GenerateRequest(prompt=long_prompt, sampling=pb.SamplingParams(max_new_tokens=4))))
        except grpc.RpcError as err:
            errors.append(err.code())

    burst = [threading.Thread(target=long_request) for _ in range(4)]
    for t in burst:
        t.start()
    for t in burst:
        t.join(120)
    burst_ended = time.perf_counter()
    burst_over.set()
    holder.join(300)
    channel.close()
    assert errors == [grpc.StatusCode.INVALID_ARGUMENT] * 4  # longer than the context, found by tokenizing
    during = [b - a for arrivals in streams for a, b in zip(arrivals, arrivals[1:])
              if burst_started <= b <= burst_ended + 0.05]
    assert streams[-1][-1] > burst_ended  # a stream ran through the whole burst
    print(f"\n4 x {tokens} tokens ({tokenize_s:.2f} s each) tokenized in {burst_ended - burst_started:.2f} s; "
          f"held stream's largest gap meanwhile {max(during):.3f} s ({len(during)} tokens)")
    # On the event loop, each long input would stall the stream for at least a whole tokenization.
    assert during and max(during) < tokenize_s, (max(during), tokenize_s)

"""The OpenAI-compatible HTTP API end to end, with the real `openai` client: real Ray cluster, Serve's
HTTP proxy on a free port, tiny models; compared with gRPC on the same service."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict

import grpc
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rstitch_core import RoutingParams, SamplingParams
from rstitch_core.config import Policy
from serving import HOLD_PROMPT, HOLD_TOKENS, openai_client, wait_until_released, worker_states
from waiting import eventually

APP_ARGS = {"max_concurrent_requests": 2}
PROMPT = "Natalia sold clips to 48 of her friends"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
ROUTING = {"policy": "rstitch", "threshold": 0.5}
REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context": "length"}


@pytest.fixture(scope="module")
def http(service) -> str:
    return service[3]


@pytest.fixture(scope="module")
def oai(http):
    with openai_client(http) as client:
        yield client


@pytest.fixture(scope="module")
def model(oai) -> str:
    return oai.models.list().data[0].id


def grpc_result(client, n=40, stop=(), **input_):
    return client.generate_result(**(input_ or {"prompt": PROMPT}), routing=RoutingParams("rstitch", 0.5),
                                  sampling=SamplingParams(max_new_tokens=n, stop=stop))


def post(http: str, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{http}{path}", data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def joined(chunks) -> dict:
    """The rstitch extension of a streamed answer: every chunk's tokens, in order."""
    out = defaultdict(list)
    for chunk in chunks:
        for key in ("token_ids", "sources", "entropies"):
            out[key] += (chunk.model_extra.get("rstitch") or {}).get(key, [])
    return out


def scrape(url: str) -> dict[tuple, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[tuple, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ray_rstitch_requests_total":
                out[(s.labels["policy"], s.labels["outcome"])] += s.value
    return out


def test_models_lists_the_pair_as_one_model_and_health_is_ok(oai, http, pair_dirs):
    # A valid Hugging Face repo name: harnesses that load a tokenizer by the model's id fail cleanly on it.
    assert [m.id for m in oai.models.list().data] == [f"{pair_dirs[0].name}-{pair_dirs[1].name}"]
    with urllib.request.urlopen(f"{http}/health", timeout=30) as response:
        assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})


def test_the_request_counter_moves_for_http_requests(oai, model, service, http):
    before = scrape(service[2])
    done = oai.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0,
                                  extra_body={"rstitch": {"policy": "speculative"}})
    assert post(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 0})[0] == 400
    outcome = {"stop": "eos", "length": "length"}[done.choices[0].finish_reason]
    expected = {("speculative", outcome): 1, ("unknown", "invalid_argument"): 1}
    # Ray ships metrics on its report interval (1 s here)
    eventually(lambda: {k: scrape(service[2])[k] - before[k] for k in expected} == expected, interval=0.5,
               message=lambda: str({k: scrape(service[2])[k] - before[k] for k in expected}))


def test_greedy_completion_equals_grpc_token_for_token_with_exact_usage(oai, client, model, engine):
    want = grpc_result(client)
    got = oai.completions.create(model=model, prompt=PROMPT, max_tokens=40, temperature=0,
                                 extra_body={"rstitch": ROUTING})
    ext, usage = got.model_extra["rstitch"], got.usage
    assert (ext["token_ids"], ext["sources"]) == (want["token_ids"], want["sources"])
    assert ext["entropies"] == pytest.approx(want["entropies"], abs=1e-6)
    assert got.choices[0].text == want["text"] and got.choices[0].finish_reason == REASONS[want["finish_reason"]]
    prompt_tokens = len(engine.tokenizer(PROMPT)["input_ids"])
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        prompt_tokens, len(want["token_ids"]), prompt_tokens + len(want["token_ids"]))
    stats = want["stats"]
    assert usage.model_extra["llm_token_share"] == pytest.approx(stats["llm_token_share"])
    assert usage.model_extra["switches"] == stats["switches_slm_to_llm"] + stats["switches_llm_to_slm"] > 0


@pytest.mark.parametrize("policy", [p.value for p in Policy])
def test_every_policy_by_name_equals_grpc(oai, client, model, policy):
    routing = {"policy": policy} if policy == "rstitch+" else {"policy": policy, "threshold": 0.5}
    want = client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=24),
                                  routing=RoutingParams(**routing))
    got = oai.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0,
                                 extra_body={"rstitch": routing})
    ext = got.model_extra["rstitch"]
    assert (ext["token_ids"], ext["sources"], got.choices[0].text) == (want["token_ids"], want["sources"], want["text"])


def test_streamed_completion_equals_grpc_and_ends_with_usage(oai, client, model, http):
    want = grpc_result(client)
    chunks = list(oai.completions.create(model=model, prompt=PROMPT, max_tokens=40, temperature=0, stream=True,
                                         stream_options={"include_usage": True}, extra_body={"rstitch": ROUTING}))
    tokens = joined(chunks)
    assert (tokens["token_ids"], tokens["sources"]) == (want["token_ids"], want["sources"])
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == REASONS[want["finish_reason"]]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want["token_ids"])
    assert all(c.usage is None for c in chunks[:-1])
    # On the wire: server-sent events ending with [DONE].
    request = urllib.request.Request(f"{http}/v1/completions", json.dumps(
        {"prompt": PROMPT, "max_tokens": 5, "stream": True}).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_chat_streamed_and_whole_equal_grpc(oai, client, model):
    want = grpc_result(client, messages=MESSAGES)
    whole = oai.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=40, temperature=0,
                                        extra_body={"rstitch": ROUTING})
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content == want["text"]
    assert whole.model_extra["rstitch"]["token_ids"] == want["token_ids"]
    assert whole.usage.completion_tokens == len(want["token_ids"])
    chunks = list(oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40, temperature=0,
                                              stream=True, extra_body={"rstitch": ROUTING}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want["text"]
    assert (joined(chunks)["token_ids"], joined(chunks)["sources"]) == (want["token_ids"], want["sources"])
    assert chunks[-1].choices[0].finish_reason == REASONS[want["finish_reason"]]


def test_stop_strings_end_the_text_before_them(oai, client, model):
    text = grpc_result(client)["text"]
    stop = text[12:15]
    assert stop.strip(), text
    cut = text[:text.index(stop)]
    whole = oai.completions.create(model=model, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop,
                                   extra_body={"rstitch": ROUTING})
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (cut, "stop")
    assert whole.model_extra["rstitch"]["finish_reason"] == "stop"
    chunks = list(oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                              max_tokens=40, temperature=0, stop=["@@", stop], stream=True,
                                              extra_body={"rstitch": ROUTING}))
    chat_text = grpc_result(client, messages=[{"role": "user", "content": PROMPT}], stop=("@@", stop))["text"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat_text and stop not in chat_text


@pytest.mark.parametrize("fields, param, message", [
    ({"max_tokens": 0}, "max_tokens", "max_tokens must be an integer >= 1, got 0"),
    ({"max_completion_tokens": 10**6}, "max_completion_tokens", "max_completion_tokens must be <= 512"),
    ({"temperature": -1}, "temperature", "temperature must be a finite number >= 0"),
    ({"top_p": 0.0}, "top_p", "top_p must be in (0, 1], got 0.0"),
    ({"seed": -1}, "seed", "seed must be an integer in [0, 2**63)"),
    ({"n": 0}, "n", "n must be an integer in [1, 16], got 0"),
    ({"stream": "yes"}, "stream", "stream must be true or false"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "sent with stream: true"),
    ({"stop": ["ok", ""]}, "stop[1]", "stop[1] must be a non-empty string"),
    ({"stop": ["x"] * 17}, "stop", "stop must hold at most 16 strings, got 17"),
    ({"messages": []}, "messages", "messages must be a non-empty list"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]", "must be a text part"),
    ({"messages": [{"role": "user", "content": "the quick brown fox " * 400}]}, "messages",
     "the context window holds 512"),
    ({"rstitch": {"threshold": 2}}, "rstitch.threshold", "rstitch.threshold (tau) must be a number in [0, 1], got 2"),
    ({"rstitch": {"policy": "bogus"}}, "rstitch.policy", "rstitch.policy: unknown policy 'bogus'; accepted: rstitch,"),
    ({"rstitch": {"draft_tokens": 0}}, "rstitch.draft_tokens", "rstitch.draft_tokens must be an integer in [1, 64]"),
    ({"rstitch": {"tau": 0.1}}, "rstitch", "rstitch: unknown field 'tau'; accepted: policy, threshold"),
    ({"rstitch": {"policy": "rstitch+", "threshold": 0.3}}, "rstitch.threshold",
     "rstitch.threshold must be unset for policy rstitch+ (it runs at its router's tau = 0.5)"),
])
def test_bad_fields_are_400_naming_the_field(http, fields, param, message):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields}
    status, answer = post(http, "/v1/chat/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error") and message in error["message"], error


def test_errors_reach_the_openai_client_and_match_grpc_messages(oai, model, client, http):
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=model, prompt=PROMPT, max_tokens=0)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as err:
        oai.completions.create(model="gpt-4o", prompt=PROMPT, max_tokens=2)
    assert err.value.body["param"] == "model" and model in err.value.body["message"]
    assert post(http, "/v1/completions", b"{not json")[1]["error"]["message"].startswith("the request body is not")
    # The same check under both front ends: one message, only the field's path differs.
    from rstitch.v1 import rstitch_pb2 as pb

    request = pb.GenerateRequest(prompt=PROMPT)
    request.sampling.max_new_tokens = 0
    with pytest.raises(grpc.RpcError) as grpc_err:
        list(client._stub.Generate(request))
    http_message = post(http, "/v1/completions", {"prompt": PROMPT, "max_tokens": 0})[1]["error"]["message"]
    assert grpc_err.value.details() == "sampling.max_new_tokens" + http_message.removeprefix("max_tokens")


def _hold(oai, model):
    """A stream that holds its session and a router slot until closed (read past its first chunk)."""
    stream = oai.completions.create(model=model, prompt=HOLD_PROMPT, max_tokens=HOLD_TOKENS, temperature=0,
                                    stream=True, extra_body={"rstitch": {"policy": "slm"}})
    next(iter(stream))
    return stream


def test_the_concurrency_cap_is_429_for_http_and_shared_with_grpc(oai, model, client):
    streams = [_hold(oai, model) for _ in range(APP_ARGS["max_concurrent_requests"])]
    try:
        with pytest.raises(openai.RateLimitError) as err:
            oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
        assert err.value.body["code"] == "server_busy" and "max_concurrent_requests=2" in err.value.body["message"]
        with pytest.raises(grpc.RpcError) as grpc_err:
            client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=4))
        assert grpc_err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for stream in streams:
            stream.close()
    states = wait_until_released(timeout=10)
    assert all(s["sessions"] == 0 and not s["slots_in_use"] for s in states), states
    assert oai.completions.create(model=model, prompt=PROMPT, max_tokens=2).usage.completion_tokens >= 1


def test_a_client_that_disconnects_mid_stream_frees_its_session_in_both_workers(oai, model):
    stream = oai.completions.create(model=model, prompt=HOLD_PROMPT, max_tokens=HOLD_TOKENS, temperature=0,
                                    stream=True, extra_body={"rstitch": ROUTING})
    sources = set()
    for chunk in stream:
        sources.update(chunk.model_extra["rstitch"]["sources"])
        if sources == {"slm", "llm"}:
            break  # both models wrote tokens: both workers hold the session
    held = {d: sum(s["sessions"] for s in worker_states(d).values()) for d in ("SLMWorker", "LLMWorker")}
    assert sources == {"slm", "llm"} and held["SLMWorker"] >= 1 and held["LLMWorker"] >= 1, held
    stream.close()
    states = wait_until_released(timeout=5)
    assert all(s["sessions"] == 0 and not s["slots_in_use"] for s in states), states


# ---- without a cluster --------------------------------------------------------------------------

def test_an_unreachable_worker_is_503_and_grpc_unavailable():
    from ray.exceptions import ActorDiedError

    from services.frontend import _grpc_status, as_unavailable
    from services.openai_api import error_status

    unavailable = as_unavailable(ActorDiedError())
    status, body = error_status(unavailable, None)
    assert (status, body["error"]["code"]) == (503, "worker_unavailable")
    assert body["error"]["message"] == "a worker is unavailable (ActorDiedError); retry later"
    assert _grpc_status(unavailable, "r1")[0] == grpc.StatusCode.UNAVAILABLE
    assert as_unavailable(RuntimeError("a bug")) is None
    assert error_status(RuntimeError("a bug"), None)[0] == 500


def test_held_back_text_travels_with_its_tokens():
    from rstitch_core.events import FinishEvent, FinishReason, GenerationStats, TokenEvent
    from services.openai_protocol import parse_openai
    from services.openai_writer import ChoiceWriter

    req = parse_openai(b'{"prompt": "x", "stream": true}', "completion", "m", 512, 0.02, None)
    writer = ChoiceWriter(req, {"id": "c", "object": "text_completion", "created": 0, "model": "m"}, None)
    held, done = TokenEvent(0, 7, "", "slm", 0.1), TokenEvent(1, 8, "ab", "llm", 0.9)
    assert writer.add(held) == []  # part of a character, or of a possible stop string
    (chunk,) = writer.add(done)
    assert chunk["choices"][0]["text"] == "ab" and chunk["rstitch"] == {
        "token_ids": [7, 8], "sources": ["slm", "llm"], "entropies": [0.1, 0.9]}
    writer.add(TokenEvent(2, 9, "", "llm", 0.5))
    (last,) = writer.add(FinishEvent(FinishReason.STOP, "ab", (7, 8, 9), GenerationStats()))
    assert last["choices"][0]["finish_reason"] == "stop" and last["rstitch"]["token_ids"] == [9]
    assert last["rstitch"]["finish_reason"] == "stop"


def test_rstitch_serve_takes_the_http_port_from_the_flag_or_the_config(tmp_path):
    import argparse

    from rstitch_cli.serve import http_port

    config = tmp_path / "serve.yaml"
    config.write_text("http_options: {port: 8123}\napplications: [{import_path: services.app:build_app}]\n")
    assert http_port(argparse.Namespace(config=None, http_port=None)) == 8000
    assert http_port(argparse.Namespace(config=str(config), http_port=None)) == 8123
    assert http_port(argparse.Namespace(config=str(config), http_port=8200)) == 8200

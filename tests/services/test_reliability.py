"""Bad input, limits, deadlines, cancellation, worker loss and fuzzing against the served system."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rstitch.v1.rstitch_pb2 as pb
from rstitch_core import Generation, RoutingParams, SamplingParams
from serving import worker_states

APP_ARGS = {"max_sessions": 2, "max_concurrent_requests": 3, "router": None}
PROMPT = "the quick brown fox"
LONG = SamplingParams(max_new_tokens=480)
# Greedy on the tiny pair, neither model writes EOS within LONG for this prompt (PROMPT's SLM output
# ends after 55 tokens, a fraction of a second), so a stream opened with it holds its session.
HOLD_PROMPT = "hold this session"


def raw_generate(address: str, payload: bytes):
    """Send arbitrary bytes as a GenerateRequest."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_stream("/rstitch.v1.RStitch/Generate", request_serializer=lambda b: b,
                                    response_deserializer=pb.GenerateResponse.FromString)
        return list(call(payload, timeout=30))


def sessions_held() -> dict[str, int]:
    return {d: sum(s["sessions"] for s in worker_states(d).values()) for d in ("SLMWorker", "LLMWorker")}


def wait_until_free(limit_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if not any(sessions_held().values()):
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"sessions still held after {limit_s}s: {sessions_held()}")


@pytest.mark.parametrize("payload, field", [
    (bytes([24, 5]) + pb.GenerateRequest(prompt="x").SerializeToString(), "sampling (field 3) has the wrong wire type"),
    (bytes([0x88, 0x01, 1]) + pb.GenerateRequest(prompt="x").SerializeToString(), "unknown field number 17"),
    (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_new_tokens=1)).SerializeToString()
     + bytes([0x1a, 2, 0x08 | (1 << 3) & 0, 0]), "sampling."),
    (b"\x0a\x05ab", "do not parse"),
    (pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_new_tokens=10**6)).SerializeToString(),
     "sampling.max_new_tokens must be <= 512"),
])
def test_malformed_requests_are_invalid_argument_naming_the_field(service, payload, field):
    with pytest.raises(grpc.RpcError) as err:
        raw_generate(service[0], payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details(), err.value.details()


def _open(client, policy) -> threading.Thread:
    """A stream that holds its session for a few seconds, read to its end in a thread (returned)."""
    stream = client.generate(prompt=HOLD_PROMPT, sampling=LONG, routing=RoutingParams(policy=policy))
    next(iter(stream))  # running, holding its session
    reader = threading.Thread(target=lambda: list(stream), daemon=True)
    reader.start()
    return reader


def test_full_workers_and_full_router_answer_resource_exhausted(client):
    readers = [_open(client, "slm"), _open(client, "slm")]  # both SLM slots mid-call
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="slm")))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_sessions=2" in err.value.details()
        readers.append(_open(client, "llm"))  # a third request fits: it never needs the SLM
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="llm")))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests=3" in err.value.details()
    finally:
        # Run the holding streams to their end (cancelling is the next tests' subject).
        for reader in readers:
            reader.join(timeout=60)
    wait_until_free(2.0)
    assert client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=4))["token_ids"]


def test_deadline_exceeded_and_the_session_is_freed(client):
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="rstitch", threshold=0.5),
                             timeout=0.3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until_free(2.0) < 2.0  # about 0.1 s when idle; slack for a loaded 2-core CI machine


def test_a_client_that_goes_away_frees_its_session_within_a_second(client):
    stream = client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="rstitch", threshold=0.5))
    for i, _ in enumerate(stream):
        if i == 20:
            break
    assert sum(sessions_held().values()) >= 1
    stream.cancel()
    assert wait_until_free(2.0) < 2.0  # about 0.1 s when idle; slack for a loaded 2-core CI machine


def test_losing_the_slm_worker_mid_request_still_completes_identically(client, engine):
    import ray

    kwargs = dict(sampling=SamplingParams(max_new_tokens=60), routing=RoutingParams(policy="rstitch", threshold=0.5))
    want = Generation.collect(engine.generate(PROMPT, **kwargs)).to_dict()
    responses, killed = [], False
    for response in client.generate(prompt=PROMPT, **kwargs):
        responses.append(response)
        if not killed and response.WhichOneof("event") == "switch_event":
            actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "SLMWorker" in a["name"])
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            killed = True
    from services.protocol import collect_responses

    got = collect_responses(responses)
    assert killed and got["stats"]["slm"]["rebuilds"] >= 1
    assert got["token_ids"] == want["token_ids"] and got["sources"] == want["sources"]


# Each field: usually unset or sensible (so valid requests really run), sometimes anything at all.
optional_float = st.one_of(st.none(), st.floats(0, 1, width=32), st.floats(allow_nan=True, allow_infinity=True, width=32))
optional_uint = st.one_of(st.none(), st.integers(0, 50), st.integers(0, 2**32 - 1))
text = st.one_of(st.just("the quick brown fox"), st.text(max_size=40))


@st.composite
def requests(draw):
    req = pb.GenerateRequest(request_id=draw(text))
    if draw(st.booleans()):
        req.prompt = draw(text)
    else:
        for _ in range(draw(st.integers(0, 3))):
            role = draw(st.one_of(st.sampled_from(["user", "system", "assistant"]), st.text(max_size=8)))
            req.messages.messages.add(role=role, content=draw(text))
    s = req.sampling
    for name, strategy in (("max_new_tokens", st.one_of(st.none(), st.integers(0, 8), st.integers(0, 2**32 - 1))),
                           ("temperature", optional_float), ("top_p", optional_float), ("top_k", optional_uint),
                           ("seed", st.one_of(st.none(), st.integers(0, 2**64 - 1)))):
        value = draw(strategy)
        if value is not None:
            setattr(s, name, value)
    s.stop.extend(draw(st.lists(text, max_size=2)))
    r = req.routing
    r.policy = draw(st.one_of(st.integers(0, 4), st.integers(0, 2**31 - 1)))
    for name, strategy in (("threshold", optional_float), ("draft_tokens", st.one_of(st.none(), st.integers(0, 70)))):
        value = draw(strategy)
        if value is not None:
            setattr(r, name, value)
    if not s.HasField("max_new_tokens") or s.max_new_tokens > 8:
        s.max_new_tokens = draw(st.integers(0, 8))  # keep the valid ones short
    return req


def test_fuzzed_requests_never_crash_a_replica(client, service):
    before = {d: set(worker_states(d)) for d in ("SLMWorker", "LLMWorker")}
    stub_channel = grpc.insecure_channel(service[0])
    call = stub_channel.unary_stream("/rstitch.v1.RStitch/Generate",
                                     request_serializer=pb.GenerateRequest.SerializeToString,
                                     response_deserializer=pb.GenerateResponse.FromString)
    outcomes = []

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(requests())
    @example(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(max_new_tokens=3)))
    @example(pb.GenerateRequest(prompt=PROMPT, routing=pb.RoutingParams(threshold=float("nan"))))
    def one(req):
        try:
            responses = list(call(req, timeout=30))
            assert responses[-1].WhichOneof("event") == "finish"
            outcomes.append("ok")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details(), req)
            outcomes.append("invalid")

    one()
    stub_channel.close()
    assert "ok" in outcomes and "invalid" in outcomes
    assert {d: set(worker_states(d)) for d in ("SLMWorker", "LLMWorker")} == before  # no replica restarted
    assert wait_until_free(2.0) < 2.0


def test_rstitch_plus_without_a_router_is_failed_precondition(client):
    with pytest.raises(grpc.RpcError) as err:
        client.generate_result(prompt="hi", sampling=SamplingParams(max_new_tokens=4),
                               routing=RoutingParams(policy="rstitch+"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds no router" in err.value.details()

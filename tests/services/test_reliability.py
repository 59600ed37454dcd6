"""Bad input, limits, deadlines, cancellation, worker loss and fuzzing against the served system."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rstitch.v1.rstitch_pb2 as pb
from rstitch_core import Generation, RoutingParams, SamplingParams
from services import limits
from services.grpc_api import cancel_safe
from services.request_parsing import parse_request
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
    """Seconds to the first look (begun within limit_s) at workers holding no session."""
    start = time.monotonic()
    while (looked := time.monotonic()) - start <= limit_s:
        if not any(sessions_held().values()):
            return looked - start
        time.sleep(0.02)
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


def _chat(n: int, content: str = "x") -> pb.GenerateRequest:
    req = pb.GenerateRequest()
    req.messages.messages.extend(pb.ChatMessage(role="user", content=content) for _ in range(n))
    return req


def _sized(total: int) -> pb.GenerateRequest:
    """A prompt request of exactly `total` (about 1 MiB) serialized bytes, within the character bound:
    4-byte characters after the 4 bytes of field tag and length."""
    whole, rest = divmod(total - 4, 4)
    req = pb.GenerateRequest(prompt="\U0001d465" * whole + "x" * rest)
    assert req.ByteSize() == total and len(req.prompt) <= limits.MAX_INPUT_CHARS
    return req


BOUNDS = [
    *[pytest.param(r, "request_id", b, id=f"request_id-{i}") for i, (r, b) in enumerate([
        (pb.GenerateRequest(prompt="x", request_id="r" * limits.MAX_REQUEST_ID_BYTES), None),
        (pb.GenerateRequest(prompt="x", request_id="r" * (limits.MAX_REQUEST_ID_BYTES + 1)), "at most 128 bytes"),
        (pb.GenerateRequest(prompt="x", request_id="é" * 65), "at most 128 bytes (UTF-8), got 130")])],
    *[pytest.param(pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(stop=["s"] * n)), "sampling.stop", b,
                   id=f"stop-count-{n}") for n, b in [(16, None), (17, "at most 16 strings, got 17")]],
    *[pytest.param(pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(stop=["s", "s" * n])), "sampling.stop[1]",
                   b, id=f"stop-chars-{n}") for n, b in [(256, None), (257, "at most 256 characters, got 257")]],
    *[pytest.param(_chat(n), "messages", b, id=f"messages-{n}")
      for n, b in [(limits.MAX_MESSAGES, None), (limits.MAX_MESSAGES + 1, "at most 256 messages, got 257")]],
    *[pytest.param(_chat(1, "c" * (limits.MAX_INPUT_CHARS - len("user") + extra)), "messages", b,
                   id=f"messages-chars-{extra}")
      for extra, b in [(0, None), (1, "total at most 262144 characters, got 262145")]],
    *[pytest.param(pb.GenerateRequest(prompt="p" * (limits.MAX_INPUT_CHARS + extra)), "prompt", b, id=f"prompt-{extra}")
      for extra, b in [(0, None), (1, "at most 262144 characters, got 262145")]],
    *[pytest.param(_sized(limits.MAX_REQUEST_BYTES + extra), "request", b, id=f"request-bytes-{extra}")
      for extra, b in [(0, None), (1, "at most 1048576 bytes, got 1048577")]],
]


@pytest.mark.parametrize("req, field, error", BOUNDS)
def test_each_bound_holds_at_its_limit_and_fails_over_it_naming_field_and_bound(req, field, error):
    if error is None:
        parse_request(req)
        return
    with pytest.raises(ValueError) as err:
        parse_request(req)
    assert str(err.value).startswith(f"{field} must") or str(err.value).startswith(f"{field}: "), str(err.value)
    assert error in str(err.value)


def test_an_oversized_request_id_is_invalid_argument_and_not_echoed(service):
    huge = "r" * 1_000_000
    with pytest.raises(grpc.RpcError) as err:
        raw_generate(service[0], pb.GenerateRequest(prompt=PROMPT, request_id=huge).SerializeToString())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "request_id must be at most 128 bytes (UTF-8), got 1000000"


class RpcContext:
    """Just what the wrapper uses of grpc's servicer context, recording calls (a finished RPC's
    real context must not be touched: it can crash the process)."""

    def __init__(self):
        self.calls, self.callbacks, self.done = [], [], False

    def peer(self) -> str:
        return "ipv4:127.0.0.1:5"

    def add_done_callback(self, callback) -> None:
        self.callbacks.append(callback)

    def set_code(self, code) -> None:
        assert not self.done, "set_code on a finished RPC"
        self.calls.append(code)

    def finish(self) -> None:
        self.done = True
        for callback in self.callbacks:
            callback(self)


def test_cancel_safe_cancels_the_inner_stream_when_the_client_goes_away_mid_send():
    """The proxy's stream handles a cancel only while it awaits its next message: the wrapper
    must cancel it there even when gRPC's cancel lands while a message is being sent, and keep
    the proxy's late bookkeeping off the finished RPC's context."""
    async def scenario():
        inner_cancelled, sending, context = asyncio.Event(), asyncio.Event(), RpcContext()

        async def proxy_stream(request, ctx):
            yield "first"
            try:
                await asyncio.Event().wait()  # waiting on the replica: where a cancel is handled
            except asyncio.CancelledError:
                inner_cancelled.set()
            ctx.set_code("CANCELLED")  # what Serve's proxy does after a cancel, the RPC being over
            assert ctx.peer() == "ipv4:127.0.0.1:5"

        async def grpc_server():
            async for message in cancel_safe(proxy_stream)(None, context):
                assert message == "first"
                sending.set()
                await asyncio.Event().wait()  # "sending" to the client, which now goes away

        server = asyncio.create_task(grpc_server())
        await sending.wait()
        server.cancel()  # lands in the send, outside the wrapper's generator
        context.finish()
        await asyncio.wait_for(inner_cancelled.wait(), timeout=5)
        return context.calls

    assert asyncio.run(scenario()) == []


def _open(client, policy) -> tuple[grpc.Call, threading.Thread]:
    """A stream that holds its session, read in a thread until it ends or is cancelled."""
    stream = client.generate(prompt=HOLD_PROMPT, sampling=LONG, routing=RoutingParams(policy=policy))
    next(iter(stream))  # running, holding its session
    reader = threading.Thread(target=lambda: _drain(stream), daemon=True)
    reader.start()
    return stream, reader


def _drain(stream) -> None:
    try:
        list(stream)
    except grpc.RpcError:
        pass  # cancelled by the test


# What a client must never see: a traceback, a path, ANSI colours, Ray ids, a pid or an IP.
LEAKS = re.compile(r"Traceback|File \"|/|\x1b|\bpid\b|\bip\b|[0-9a-f]{16,}|\d+\.\d+\.\d+\.\d+|actor", re.I)


def test_full_workers_and_full_router_answer_resource_exhausted(client):
    held = [_open(client, "slm"), _open(client, "slm")]  # both SLM slots mid-call
    try:
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="slm")))
        details = err.value.details()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_sessions=2" in details
        assert "\n" not in details and len(details) < 200 and not LEAKS.search(details), details
        held.append(_open(client, "llm"))  # a third request fits: it never needs the SLM
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="llm")))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests=3" in err.value.details() and not LEAKS.search(err.value.details())
    finally:
        for stream, _ in held:
            stream.cancel()
    assert wait_until_free(1.0) <= 1.0  # the cancels right after RESOURCE_EXHAUSTED answers reach the router
    for _, reader in held:
        reader.join(timeout=10)
    assert client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=4))["token_ids"]


def test_deadline_exceeded_and_the_session_is_freed(client):
    with pytest.raises(grpc.RpcError) as err:
        list(client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="rstitch", threshold=0.5),
                             timeout=0.3))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until_free(1.0) <= 1.0


def test_a_client_that_goes_away_frees_its_session_within_a_second(client):
    stream = client.generate(prompt=PROMPT, sampling=LONG, routing=RoutingParams(policy="rstitch", threshold=0.5))
    for i, _ in enumerate(stream):
        if i == 20:
            break
    assert sum(sessions_held().values()) >= 1
    stream.cancel()
    assert wait_until_free(1.0) <= 1.0


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

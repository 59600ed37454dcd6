"""services.protocol: request validation with field paths, and events -> responses -> the core's result."""

import dataclasses
import subprocess
import sys

import pytest

from rstitch.v1 import rstitch_pb2 as pb
from rstitch_core import Generation, GenerationStats, ModelStats, Policy, RoutingParams, SamplingParams, TokenEvent
from services.protocol import (
    ResultBuilder,
    build_request,
    collect_responses,
    finish_response,
    switch_response,
    tokens_response,
    tokens_responses,
)
from services.request_parsing import NoRouter, parse_request


def request(**fields) -> pb.GenerateRequest:
    """A valid prompt request, with `fields` merged in (e.g. sampling=pb.SamplingParams(...))."""
    return pb.GenerateRequest(**{"prompt": "hello", **fields})


def test_unset_fields_get_the_core_defaults():
    parsed = parse_request(request())
    assert parsed.prompt == "hello" and parsed.messages is None
    assert parsed.sampling == SamplingParams() and parsed.routing == RoutingParams()
    assert len(parsed.request_id) == 32 and parsed.request_id != parse_request(request()).request_id
    assert parse_request(request(request_id="r1")).request_id == "r1"


def test_messages_are_parsed_into_plain_dicts():
    req = pb.GenerateRequest(messages=pb.Messages(messages=[pb.ChatMessage(role="user", content="hi")]))
    assert parse_request(req).messages == [{"role": "user", "content": "hi"}]


def chat(*pairs) -> pb.GenerateRequest:
    req = pb.GenerateRequest()
    req.messages.SetInParent()
    req.messages.messages.extend(pb.ChatMessage(role=r, content=c) for r, c in pairs)
    return req


@pytest.mark.parametrize("req, message", [
    (pb.GenerateRequest(), "prompt or messages is required"),
    (request(prompt=""), "prompt must be a non-empty string, got ''"),
    (request(prompt="  \n"), "prompt must be a non-empty string"),
    (chat(), "messages.messages must be a non-empty list"),
    (chat(("user", "hi"), ("", "x")), "messages.messages[1].role must be a non-empty string, got ''"),
    (chat(("user", "")), "messages.messages must contain some non-empty content"),  # content unset = ""
    (request(sampling=pb.SamplingParams(max_new_tokens=0)), "sampling.max_new_tokens must be an integer >= 1, got 0"),
    (request(sampling=pb.SamplingParams(temperature=-0.5)), "sampling.temperature must be a finite number >= 0"),
    (request(sampling=pb.SamplingParams(temperature=float("inf"))), "sampling.temperature must be a finite number"),
    (request(sampling=pb.SamplingParams(top_p=0)), "sampling.top_p must be in (0, 1], got 0"),
    (request(sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p must be in (0, 1], got 1.5"),
    (request(sampling=pb.SamplingParams(seed=2**63)), "sampling.seed must be an integer in [0, 2**63)"),
    (request(sampling=pb.SamplingParams(stop=["a", ""])), "sampling.stop[1] must be a non-empty string"),
    (request(routing=pb.RoutingParams(threshold=float("nan"))), "routing.threshold (tau) must be a number in [0, 1], got nan"),
    (request(routing=pb.RoutingParams(threshold=-0.1)), "routing.threshold (tau) must be a number in [0, 1], got -0.1"),
    (request(routing=pb.RoutingParams(threshold=1.25)), "routing.threshold (tau) must be a number in [0, 1], got 1.25"),
    (request(routing=pb.RoutingParams(draft_tokens=0)), "routing.draft_tokens must be an integer in [1, 64], got 0"),
    (request(routing=pb.RoutingParams(draft_tokens=65)), "routing.draft_tokens must be an integer in [1, 64], got 65"),
    (request(routing=pb.RoutingParams(relaxed_ratio=1.5)), "routing.relaxed_ratio must be a number in [0, 1], got 1.5"),
    (request(routing=pb.RoutingParams(acceptance=7)), "routing.acceptance: unknown value 7"),
    (request(routing=pb.RoutingParams(policy=9)), "routing.policy: unknown value 9; accepted: 0 (POLICY_UNSPECIFIED), 1"),
])
def test_every_bad_field_is_named_by_its_path(req, message):
    with pytest.raises(ValueError) as err:
        parse_request(req)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("enum, policy", [(pb.POLICY_UNSPECIFIED, Policy.VERIFIED), (pb.POLICY_RSTITCH, Policy.RSTITCH),
                                          (pb.POLICY_LLM, Policy.LLM),
                                          (pb.POLICY_SLM, Policy.SLM), (pb.POLICY_SPECULATIVE, Policy.SPECULATIVE)])
def test_policy_enum(enum, policy):
    assert parse_request(request(routing=pb.RoutingParams(policy=enum))).routing.policy is policy


def test_the_servers_default_threshold_fills_only_an_unset_threshold():
    assert parse_request(request(), default_threshold=0.1).routing.threshold == 0.1
    assert parse_request(request(), default_threshold=None).routing.threshold == RoutingParams().threshold
    explicit = request(routing=pb.RoutingParams(threshold=0.0))  # set to 0: not "unset"
    assert parse_request(explicit, default_threshold=0.1).routing.threshold == 0.0


def test_rstitch_plus_runs_at_the_servers_router_tau():
    req = build_request("hi", None, SamplingParams(), RoutingParams("rstitch+", 0.3))
    assert not req.routing.HasField("threshold")  # the server's router decides tau
    assert parse_request(req, 0.02, router_tau=0.2).routing == RoutingParams("rstitch+", 0.2)
    with pytest.raises(NoRouter, match="holds no router"):
        parse_request(req, 0.02, router_tau=None)
    req.routing.threshold = 0.4
    with pytest.raises(ValueError, match="routing.threshold must be unset for policy rstitch\\+"):
        parse_request(req, 0.02, router_tau=0.2)


def test_build_then_parse_round_trips_the_dataclasses():
    sampling = SamplingParams(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=5, seed=2**63 - 1, stop=("\n\n", "##"))
    routing = RoutingParams(policy="verified", threshold=0.02, draft_tokens=64, acceptance="relaxed",
                            relaxed_ratio=0.3)
    parsed = parse_request(build_request(messages=[{"role": "user", "content": "hi"}], sampling=sampling,
                                         routing=routing, request_id="abc"))
    # float fields travel as float32; 0.7, 0.9 and 0.02 must come back as exactly those numbers
    assert (parsed.sampling, parsed.routing, parsed.request_id) == (sampling, routing, "abc")
    assert parsed.messages == [{"role": "user", "content": "hi"}] and parsed.prompt is None
    default = parse_request(build_request("p"))
    assert (default.prompt, default.sampling, default.routing) == ("p", SamplingParams(), RoutingParams())


def test_build_request_sets_every_optional_field_and_checks_its_input():
    req = build_request("p", sampling=SamplingParams(seed=1))
    assert all(req.sampling.HasField(f) for f in ("max_new_tokens", "temperature", "top_p", "top_k", "seed"))
    assert req.routing.HasField("threshold") and not req.routing.HasField("draft_tokens")  # policy default
    assert req.routing.policy == pb.POLICY_VERIFIED
    relaxed = build_request("p", routing=RoutingParams("verified", draft_tokens=3, acceptance="relaxed",
                                                       relaxed_ratio=0.25)).routing
    assert (relaxed.policy, relaxed.draft_tokens, relaxed.acceptance) == (pb.POLICY_VERIFIED, 3, pb.ACCEPTANCE_RELAXED)
    assert parse_request(build_request("p", routing=RoutingParams("verified", acceptance="relaxed",
                                                                  relaxed_ratio=0.25))).routing.relaxed_ratio == 0.25
    with pytest.raises(ValueError, match="exactly one of a prompt or chat messages"):
        build_request()
    with pytest.raises(ValueError, match=r"messages\[0\] must be an object"):
        build_request(messages=[{"role": "user"}])


def test_usage_messages_mirror_the_stats_dataclasses():
    # The conversions copy fields by name: a field added on one side only must fail here.
    assert {f.name for f in pb.ModelUsage.DESCRIPTOR.fields} == {f.name for f in dataclasses.fields(ModelStats)}
    assert ({f.name for f in pb.Usage.DESCRIPTOR.fields}
            == {f.name for f in dataclasses.fields(GenerationStats)} | {"generated_tokens", "rolled_back_tokens"})


def responses_for(events, tokens_per_message):
    """Responses the way a server could send them: token events grouped by `tokens_per_message`."""
    out, pending = [], []
    for event in events:
        if isinstance(event, TokenEvent):
            pending.append(event)
            continue
        if pending:
            out.extend(tokens_per_message("r", pending))
            pending = []
        out.append(switch_response("r", event) if hasattr(event, "direction") else finish_response("r", event))
    return out


@pytest.mark.parametrize("grouping", [
    lambda rid, events: [tokens_response(rid, [e]) for e in events],  # one message per token
    lambda rid, events: [tokens_response(rid, events)],  # one message for a whole run
    tokens_responses,  # one message per run of tokens from one model
])
def test_responses_collect_into_the_cores_own_result(engine, grouping):
    events = list(engine.generate("the quick brown", sampling=SamplingParams(max_new_tokens=24, stop=("zz",)),
                                  routing=RoutingParams(policy="rstitch", threshold=0.6)))
    expected = Generation.collect(iter(events))
    assert expected.switches and {"slm", "llm"} <= set(expected.sources)  # switches are exercised
    result = collect_responses(responses_for(events, grouping))
    assert result == expected.to_dict()  # same keys, ids, texts, float32-exact entropies, stats


def test_speculative_round_trips(close_pair):
    events = list(close_pair.generate("the quick brown", sampling=SamplingParams(max_new_tokens=20),
                                      routing=RoutingParams(policy="speculative", draft_tokens=4)))
    result = collect_responses(responses_for(events, tokens_responses))
    assert result == Generation.collect(iter(events)).to_dict()


def test_a_mixed_message_carries_its_text_on_the_last_token():
    events = [TokenEvent(0, 5, "ab", "slm", 0.125), TokenEvent(1, 6, "c", "llm", 0.25)]
    assert [r.tokens.sources[:] for r in tokens_responses("r", events)] == [[pb.MODEL_SLM], [pb.MODEL_LLM]]
    got = ResultBuilder().add(tokens_response("r", events))
    assert got == [TokenEvent(0, 5, "", "slm", 0.125), TokenEvent(1, 6, "abc", "llm", 0.25)]


def test_result_builder_rejects_a_broken_stream():
    builder = ResultBuilder()
    with pytest.raises(ValueError, match="tokens.index is 3 but 0 tokens arrived before it"):
        builder.add(pb.GenerateResponse(tokens=pb.Tokens(index=3, token_ids=[1], sources=[1], entropies=[0.0])))
    with pytest.raises(RuntimeError, match="without a finish message"):
        collect_responses([tokens_response("r", [TokenEvent(0, 5, "a", "slm", 0.0)])])


def test_protocol_and_client_import_no_ray():
    code = "import sys, services.client, services.protocol; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"

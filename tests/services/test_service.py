"""The served system end to end: real Ray cluster, real gRPC channel, tiny models."""

from __future__ import annotations

import grpc
import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams
from serving import HOLD_PROMPT, HOLD_TOKENS, evict_llm_sessions, wait_until_released, worker_states

PROMPT = "Natalia sold clips to 48 of her friends"


def local(engine, policy, n=40, **kw):
    return Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=n),
                                              routing=RoutingParams(policy=policy, threshold=0.5, **kw))).to_dict()


def served(client, policy, n=40, **kw):
    return client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=n),
                                  routing=RoutingParams(policy=policy, threshold=0.5, **kw))


@pytest.mark.parametrize("policy, kw", [("rstitch", {}), ("llm", {}), ("slm", {}), ("speculative", {}),
                                        ("verified", {}), ("verified", {"acceptance": "relaxed", "relaxed_ratio": 0.0})])
def test_grpc_stream_equals_the_in_process_engine(client, engine, policy, kw):
    got, want = served(client, policy, **kw), local(engine, policy, **kw)
    assert got["token_ids"] == want["token_ids"] and got["sources"] == want["sources"]
    assert got["text"] == want["text"] and got["finish_reason"] == want["finish_reason"]
    assert got["entropies"] == pytest.approx(want["entropies"], abs=1e-5)
    g, w = got["stats"], want["stats"]
    for key in ("switches_slm_to_llm", "switches_llm_to_slm", "discarded_tokens", "drafted_tokens", "accepted_tokens"):
        assert g[key] == w[key], key
    for model in ("slm", "llm"):
        for key in ("tokens", "forward_passes", "forward_tokens", "prefill_tokens"):
            assert g[model][key] == w[model][key], (model, key)
        assert g[model]["rebuilds"] == 0
    if policy == "rstitch":
        assert g["switches_slm_to_llm"] > 0 and g["switches_llm_to_slm"] > 0
    if policy == "verified":
        assert g["drafted_tokens"] > 0 and g["rolled_back_tokens"] == w["rolled_back_tokens"]


def test_concurrent_verified_sessions_each_equal_llm_only(client, engine):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [PROMPT, "def add(a, b):", "The answer is", "print(add(2, 3))"]

    def one(prompt):
        return client.generate_result(prompt=prompt, sampling=SamplingParams(max_new_tokens=30),
                                      routing=RoutingParams(policy="verified", threshold=0.5))

    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(one, prompts))
    for prompt, got in zip(prompts, results):
        want = Generation.collect(engine.generate(prompt, sampling=SamplingParams(max_new_tokens=30),
                                                  routing=RoutingParams(policy="llm")))
        assert got["token_ids"] == want.token_ids, prompt


def test_rstitch_plus_runs_the_router_in_the_slm_worker_like_in_process(client, engine, router_file):
    from rstitch_core.router import LearnedRouter

    router = LearnedRouter.load(router_file, slm=engine.slm)
    want = Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=40),
                                              routing=RoutingParams("rstitch+", router.config.tau),
                                              router=router)).to_dict()
    got = client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=40),
                                 routing=RoutingParams(policy="rstitch+"))
    assert (got["token_ids"], got["sources"]) == (want["token_ids"], want["sources"])
    assert got["stats"]["switches_slm_to_llm"] == want["stats"]["switches_slm_to_llm"]


def test_rstitch_plus_with_a_threshold_is_invalid_argument(service):
    from rstitch.v1 import rstitch_pb2 as pb
    from services.client import RStitchClient

    with RStitchClient(service[0]) as c:
        request = pb.GenerateRequest(prompt="hi")
        request.routing.policy = pb.POLICY_RSTITCH_PLUS
        request.routing.threshold = 0.3
        with pytest.raises(grpc.RpcError) as err:
            list(c._stub.Generate(request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "routing.threshold must be unset for policy rstitch+ (it runs at its router's tau = 0.5)" in (
        err.value.details())


def test_tokens_stream_before_the_request_finishes(client):
    """Real streaming: the first message, and the twenty-first, reach the client while the
    workers still hold the session (checked on the workers, not with a clock)."""
    stream = client.generate(prompt=HOLD_PROMPT, sampling=SamplingParams(max_new_tokens=HOLD_TOKENS),
                             routing=RoutingParams(policy="rstitch", threshold=0.5))
    held_at = {}
    for i, response in enumerate(stream):
        assert response.WhichOneof("event") != "finish"
        if i in (0, 20):
            held_at[i] = sum(s["sessions"] for d in ("SLMWorker", "LLMWorker") for s in worker_states(d).values())
        if i == 20:
            break
    stream.cancel()
    assert held_at[0] >= 1 and held_at[20] >= 1, held_at


def test_each_session_sticks_to_one_llm_replica_and_sessions_spread(client):
    before = worker_states("LLMWorker")
    assert len(before) == 2
    results = [served(client, "rstitch", n=30) for _ in range(8)]
    assert all(r["stats"]["switches_slm_to_llm"] >= 2 for r in results)
    # A turn on a replica that does not hold the session would have to rebuild it.
    assert all(r["stats"]["llm"]["rebuilds"] == 0 for r in results)
    after = worker_states("LLMWorker")
    assert all(after[r]["turns"] > before[r]["turns"] for r in after)  # both replicas served sessions
    assert sum(after[r]["rebuilds"] for r in after) == sum(before[r]["rebuilds"] for r in before)


def test_a_session_evicted_mid_request_is_rebuilt_with_identical_output(client, engine):
    want = local(engine, "rstitch", n=60)
    stream = client.generate(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=60),
                             routing=RoutingParams(policy="rstitch", threshold=0.5))
    responses, evicted = [], False
    for response in stream:
        responses.append(response)
        if not evicted and response.WhichOneof("event") == "switch_event":
            evicted |= evict_llm_sessions()
    from services.protocol import collect_responses

    got = collect_responses(responses)
    assert evicted and got["stats"]["llm"]["rebuilds"] >= 1
    assert got["token_ids"] == want["token_ids"] and got["sources"] == want["sources"]


def test_cancelling_a_stream_frees_the_session_in_both_workers(client):
    stream = client.generate(prompt=HOLD_PROMPT, sampling=SamplingParams(max_new_tokens=HOLD_TOKENS),
                             routing=RoutingParams(policy="rstitch", threshold=0.5))
    for i, _ in enumerate(stream):
        if i == 10:
            break
    held = {d: sum(s["sessions"] for s in worker_states(d).values()) for d in ("SLMWorker", "LLMWorker")}
    assert sum(held.values()) >= 1
    stream.cancel()
    states = wait_until_released(timeout=5)
    assert all(s["sessions"] == 0 and not s["slots_in_use"] for s in states), states


def test_bad_requests_are_invalid_argument_and_the_service_keeps_serving(client, service):
    import rstitch.v1.rstitch_pb2 as pb
    import rstitch.v1.rstitch_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(service[0])
    stub = pb_grpc.RStitchStub(channel)
    bad = [pb.GenerateRequest(prompt=""), pb.GenerateRequest(prompt="x", sampling=pb.SamplingParams(max_new_tokens=0)),
           pb.GenerateRequest(prompt="x", routing=pb.RoutingParams(threshold=float("nan"))),
           pb.GenerateRequest(prompt="x", routing=pb.RoutingParams(policy=9)),
           pb.GenerateRequest(prompt="the quick brown fox " * 400)]
    for request in bad:
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert err.value.details()
    channel.close()
    assert served(client, "llm", n=5)["finish_reason"] in ("length", "eos")



def test_server_reflection_lists_and_describes_the_service(service):
    """What `grpcurl -plaintext HOST:9000 list` and `describe rstitch.v1.RStitch` ask for."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as rpb
    from grpc_reflection.v1alpha import reflection_pb2_grpc as rgrpc

    with grpc.insecure_channel(service[0]) as channel:
        stub = rgrpc.ServerReflectionStub(channel)
        requests = [rpb.ServerReflectionRequest(list_services=""),
                    rpb.ServerReflectionRequest(file_containing_symbol="rstitch.v1.RStitch")]
        listed, described = list(stub.ServerReflectionInfo(iter(requests)))
    assert "rstitch.v1.RStitch" in {s.name for s in listed.list_services_response.service}
    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in described.file_descriptor_response.file_descriptor_proto]
    service_desc = next(s for f in files if f.package == "rstitch.v1" for s in f.service)
    method = service_desc.method[0]
    assert (method.name, method.server_streaming) == ("Generate", True)

def test_losing_the_llm_replica_mid_request_continues_on_another(client, engine):
    """Runs last in this module: it kills a replica (Serve starts a replacement)."""
    import ray

    want = local(engine, "rstitch", n=60)
    stream = client.generate(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=60),
                             routing=RoutingParams(policy="rstitch", threshold=0.5))
    responses, killed = [], None
    for response in stream:
        responses.append(response)
        if killed is None and response.WhichOneof("event") == "switch_event":
            holder = next(r for r, s in worker_states("LLMWorker").items() if s["session_ids"])
            actor = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                         if "LLMWorker" in a["name"] and a["name"].endswith(holder))
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            killed = holder
    from services.protocol import collect_responses

    got = collect_responses(responses)
    assert killed and got["stats"]["llm"]["rebuilds"] >= 1
    assert got["token_ids"] == want["token_ids"] and got["sources"] == want["sources"]

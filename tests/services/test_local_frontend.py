"""The front end's behaviour without Ray: Frontend, RemoteSession and both workers in this process
(services/local.py), reached over real gRPC. Serve-specific behaviour (replicas, the proxy's cancel
path, metrics export) stays in the other tests of this folder."""

import threading

import grpc
import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams
from rstitch_core.drafting.cost import PassCost
from rstitch_core.drafting.profile import CostProfile, ProfileKey
from rstitch_core.events import TokenEvent
from services.client import RStitchClient
from services.protocol import ResultBuilder
from serving import HOLD_PROMPT, HOLD_TOKENS, LocalFrontend
from waiting import eventually

PROMPTS = ["the quick brown", "add 2 and 3", "def f(x):"]
# Drafts pay on this profile (an LLM pass over k tokens costs about one step): cost-aware requests draft.
MEMORY_BOUND = CostProfile(ProfileKey("slm", "llm", "float32", "cpu", "Test CPU", 2),
                           PassCost((0.004, 1e-5, 2e-4, 0, 0, 0), knee=64), PassCost((0.02, 5e-5, 1e-3, 0, 0, 0), knee=64))


def wait_until_released(frontend: LocalFrontend) -> None:
    """Until both workers hold no session: releases are fire and forget, and may land after the
    client has its last message."""
    eventually(lambda: frontend.sessions() == {"slm": 0, "llm": 0}, message=lambda: str(frontend.sessions()))


@pytest.fixture(scope="module")
def frontend(pair_dirs, tmp_path_factory):
    profile = MEMORY_BOUND.save(tmp_path_factory.mktemp("profile") / "p.json")
    f = LocalFrontend(*map(str, pair_dirs), cost_profile=str(profile))
    yield f
    f.close()


def test_verified_served_concurrently_equals_llm_only_with_and_without_cost_aware_drafts(frontend, engine):
    sampling = SamplingParams(max_new_tokens=24)
    expected = {p: Generation.collect(engine.generate(p, sampling=sampling, routing=RoutingParams(policy="llm"))).token_ids
                for p in PROMPTS}
    got, errors = {}, []

    def run(prompt, routing):
        try:
            with RStitchClient(frontend.address, timeout=120) as client:
                got[(prompt, routing.draft_tokens)] = client.generate_result(prompt, sampling=sampling,
                                                                             routing=routing)["token_ids"]
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(p, RoutingParams(policy="verified", threshold=0.5, draft_tokens=k)))
               for p in PROMPTS for k in (None, 3)]  # None: cost-aware (profile and drafting windows)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (prompt, _), token_ids in got.items():
        assert token_ids == expected[prompt]
    wait_until_released(frontend)  # every finished request is released


def test_a_cancelled_stream_frees_its_session_in_both_workers(frontend):
    with RStitchClient(frontend.address, timeout=120) as client:
        stream = client.generate(HOLD_PROMPT, sampling=SamplingParams(max_new_tokens=HOLD_TOKENS),
                                 routing=RoutingParams(policy="verified", threshold=0.5, draft_tokens=3))
        next(iter(stream))  # running: no policy ends this prompt within HOLD_TOKENS
        stream.cancel()
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() is grpc.StatusCode.CANCELLED
    wait_until_released(frontend)


def test_grpc_carries_the_logits_controls_and_logprobs(frontend, engine):
    """gRPC parity with the OpenAI API: penalties and logit_bias reach the core (verified with exact
    acceptance still equals llm under them, and they change the output), and every token carries
    the LLM's log-probability and its top alternatives, as in-process."""
    sampling = SamplingParams(max_new_tokens=16, presence_penalty=1.5, repetition_penalty=1.3,
                              logit_bias=((5, 3.0),), min_tokens=4, logprobs=2)
    llm = RoutingParams(policy="llm")
    want = [e for e in engine.generate(PROMPTS[0], sampling=sampling, routing=llm) if isinstance(e, TokenEvent)]
    plain = Generation.collect(engine.generate(PROMPTS[0], sampling=SamplingParams(max_new_tokens=16), routing=llm))
    assert [e.token_id for e in want] != list(plain.token_ids)  # the controls do something
    with RStitchClient(frontend.address, timeout=120) as client:
        stream = client.generate(PROMPTS[0], sampling=sampling,
                                 routing=RoutingParams(policy="verified", threshold=0.5, draft_tokens=3))
        got = [e for e in ResultBuilder().events(stream) if isinstance(e, TokenEvent)]
    assert [e.token_id for e in got] == [e.token_id for e in want]
    assert [e.logprob for e in got] == pytest.approx([e.logprob for e in want], abs=1e-4)
    assert all(len(e.top_logprobs) == 2 and e.top_logprobs[0][1] >= e.logprob - 1e-4 for e in got)
    with RStitchClient(frontend.address, timeout=120) as client, pytest.raises(grpc.RpcError) as err:
        list(client.generate(PROMPTS[0], sampling=SamplingParams(max_new_tokens=4, logit_bias=((10**6, 1.0),))))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "sampling.logit_bias keys" in err.value.details()

"""The llama.cpp backend served: the real front end and workers (services/local.py) on the tiny GGUF
pair, over gRPC. Served equals in-process, concurrent sessions share batched passes, and every
llama.cpp sequence is released when a request ends or its client goes away."""

from __future__ import annotations

import threading

import grpc
import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams
from services.client import RStitchClient
from serving import HOLD_PROMPT, HOLD_TOKENS, LocalFrontend
from waiting import eventually

PROMPTS = ["the quick brown", "add 2 and 3", "def f(x):", "Natalia sold"]
# Greedy tokens (argmax) survive llama.cpp's batch-shape-dependent rounding; an entropy gate near tau
# may not (rows batched together sum in another order), so rstitch is compared one request at a time.
POLICIES = [RoutingParams(policy="llm"), RoutingParams(policy="verified", threshold=0.5, draft_tokens=3)]
RSTITCH = RoutingParams(policy="rstitch", threshold=0.5)


@pytest.fixture(scope="module")
def frontend(gguf_pair, llamacpp_engine):
    f = LocalFrontend(*map(str, gguf_pair), dtype="auto", worker_kwargs={"backend": "llamacpp"})
    yield f
    f.close()


def llama_states(frontend: LocalFrontend) -> dict:
    async def read():
        return {m: (len(h.worker.store.sessions), h.worker.engine.slots_in_use, h.worker.engine.stats.max_rows)
                for m, h in frontend.frontend.handles.items()}
    return frontend.call(read())


def wait_until_released(frontend: LocalFrontend) -> dict:
    def released():
        states = llama_states(frontend)
        return states if not any(sessions or slots for sessions, slots, _ in states.values()) else None

    return eventually(released, message=lambda: str(llama_states(frontend)))


def test_workers_run_the_llamacpp_backend(frontend):
    for handle in frontend.frontend.handles.values():
        assert handle.worker.model.backend == "llamacpp" and handle.worker.batching_off_reason is None


def test_served_concurrently_equals_in_process(frontend, llamacpp_engine):
    sampling = SamplingParams(max_new_tokens=24)
    expected = {(p, i): Generation.collect(llamacpp_engine.generate(p, sampling=sampling, routing=r)).token_ids
                for p in PROMPTS for i, r in enumerate(POLICIES)}
    got, errors = {}, []

    def run(prompt, i):
        try:
            with RStitchClient(frontend.address, timeout=120) as client:
                got[(prompt, i)] = client.generate_result(prompt, sampling=sampling, routing=POLICIES[i])["token_ids"]
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=key) for key in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected
    states = wait_until_released(frontend)
    assert max(rows for _, _, rows in states.values()) > 1  # sessions shared llama_decode calls


def test_rstitch_served_alone_equals_in_process(frontend, llamacpp_engine):
    sampling = SamplingParams(max_new_tokens=24)
    with RStitchClient(frontend.address, timeout=120) as client:
        for prompt in PROMPTS:
            want = Generation.collect(llamacpp_engine.generate(prompt, sampling=sampling, routing=RSTITCH))
            got = client.generate_result(prompt, sampling=sampling, routing=RSTITCH)
            assert got["token_ids"] == list(want.token_ids) and got["sources"] == list(want.sources), prompt
    wait_until_released(frontend)


def test_a_cancelled_stream_frees_its_llamacpp_sequences(frontend):
    client = RStitchClient(frontend.address, timeout=120)
    stream = client.generate(HOLD_PROMPT, sampling=SamplingParams(max_new_tokens=HOLD_TOKENS),
                           routing=RoutingParams(policy="rstitch", threshold=0.5))
    next(stream)  # the request is running on the workers
    assert any(slots for _, slots, _ in llama_states(frontend).values())
    stream.cancel()
    with pytest.raises(grpc.RpcError):
        for _ in stream:
            pass
    client.close()
    wait_until_released(frontend)

"""Shadow prefill: while the SLM holds the turn, the LLM worker prefills the SLM's tokens."""

from __future__ import annotations

import pytest

from rstitch_core import Generation, RoutingParams, SamplingParams
from serving import HOLD_PROMPT, HOLD_TOKENS, wait_until_released, worker_states

APP_ARGS = {"shadow_prefill_tokens": 2, "llm_replicas": 1}
PROMPT = "Natalia sold clips to 48 of her friends"


def shadow_tokens() -> int:
    return sum(s["shadow_prefill_tokens"] for s in worker_states("LLMWorker").values())


@pytest.mark.parametrize("sampling", [SamplingParams(max_new_tokens=80),
                                      SamplingParams(max_new_tokens=80, temperature=0.8, top_k=20, seed=11)],
                         ids=["greedy", "sampled"])
def test_output_is_unchanged_and_hand_overs_prefill_fewer_tokens(client, engine, sampling):
    routing = RoutingParams(policy="rstitch", threshold=0.5)
    before = shadow_tokens()
    got = client.generate_result(prompt=PROMPT, sampling=sampling, routing=routing)
    fed_in_shadow = shadow_tokens() - before
    want = Generation.collect(engine.generate(PROMPT, sampling=sampling, routing=routing)).to_dict()
    assert got["token_ids"] == want["token_ids"] and got["sources"] == want["sources"]
    assert got["text"] == want["text"] and got["finish_reason"] == want["finish_reason"]
    assert got["entropies"] == pytest.approx(want["entropies"], abs=1e-5)
    g, w = got["stats"], want["stats"]
    assert g["slm"] | {"seconds": 0} == w["slm"] | {"seconds": 0}
    assert g["llm"]["tokens"] == w["llm"]["tokens"] and g["llm"]["rebuilds"] == 0
    # Same switches; at each hand-over the LLM had seen more: it partially prefilled fewer tokens
    # (never none: the last token is left for the hand-over pass, which needs its logits).
    assert [(s["direction"], s["position"]) for s in got["switches"]] == \
        [(s["direction"], s["position"]) for s in want["switches"]]
    handovers = [(a["prefill_tokens"], b["prefill_tokens"]) for a, b in zip(got["switches"], want["switches"])
                 if a["direction"] == "slm_to_llm"]
    assert handovers and all(1 <= a <= b for a, b in handovers)
    assert fed_in_shadow > 0 and sum(a for a, _ in handovers) < sum(b for _, b in handovers)


def test_no_shadow_prefill_for_single_model_policies(client):
    before = shadow_tokens()
    for policy in ("slm", "llm", "speculative"):
        client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=40),
                               routing=RoutingParams(policy=policy, threshold=0.5))
    assert shadow_tokens() == before


def test_a_request_cut_short_mid_shadow_prefill_frees_everything(client):
    """Cancelled once the LLM worker has prefilled some of its tokens in the shadow (a condition,
    not a deadline that a fast machine would outrun)."""
    import grpc

    before = shadow_tokens()
    stream = client.generate(prompt=HOLD_PROMPT, sampling=SamplingParams(max_new_tokens=HOLD_TOKENS),
                             routing=RoutingParams(policy="rstitch", threshold=0.5))
    kinds = []
    for response in stream:
        kinds.append(response.WhichOneof("event"))
        if shadow_tokens() > before:
            break
    assert stream.cancel() and "finish" not in kinds, kinds
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    states = wait_until_released(timeout=10)
    assert all(s["sessions"] == 0 and not s["slots_in_use"] for s in states), states

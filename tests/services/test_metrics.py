"""Metrics reach Ray's Prometheus endpoint and move by exactly what each request's usage says."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rstitch_core import RoutingParams, SamplingParams
from waiting import eventually

PROMPT = "Natalia sold clips to 48 of her friends"


def scrape(url: str) -> dict[tuple, float]:
    """{(sample name, sorted rstitch labels): value}, summed over replicas and other Ray labels."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[tuple, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_rstitch_"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items()
                                      if k in ("model", "direction", "policy", "outcome", "le")))
                out[(sample.name, labels)] += sample.value
    return out


def delta(before, after, name, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def wait_for(url, check, timeout=60):
    """The first scrape that passes `check` (Ray ships metrics on its report interval)."""
    def passed():
        after = scrape(url)
        return after if check(after) else None

    return eventually(passed, timeout, interval=0.5)


@pytest.mark.parametrize("policy", ["rstitch", "speculative", "verified"])
def test_counters_move_by_exactly_the_request_usage(client, service, policy):
    url = service[2]
    before = scrape(url)
    result = client.generate_result(prompt=PROMPT, sampling=SamplingParams(max_new_tokens=40),
                                    routing=RoutingParams(policy=policy, threshold=0.5))
    stats, reason, n = result["stats"], result["finish_reason"], len(result["token_ids"])
    expected = {("ray_rstitch_requests_total", (("outcome", reason), ("policy", policy))): 1,
                ("ray_rstitch_discarded_tokens_total", ()): stats["discarded_tokens"],
                ("ray_rstitch_drafted_tokens_total", (("policy", policy),)): stats["drafted_tokens"],
                ("ray_rstitch_accepted_tokens_total", (("policy", policy),)): stats["accepted_tokens"],
                ("ray_rstitch_rolled_back_tokens_total", (("policy", policy),)): stats["rolled_back_tokens"],
                ("ray_rstitch_inter_token_latency_seconds_count", (("policy", policy),)): n - 1,
                ("ray_rstitch_time_to_first_token_seconds_count", (("policy", policy),)): 1,
                ("ray_rstitch_request_llm_token_share_count", (("policy", policy),)): 1}
    for model in ("slm", "llm"):
        expected[("ray_rstitch_tokens_total", (("model", model),))] = stats[model]["tokens"]
        expected[("ray_rstitch_token_entropy_count", (("model", model),))] = stats[model]["tokens"]
        expected[("ray_rstitch_prefill_tokens_total", (("model", model),))] = stats[model]["prefill_tokens"]
        expected[("ray_rstitch_forward_passes_total", (("model", model),))] = stats[model]["forward_passes"]
    # One switch-latency gap per token that follows switches (several at one position: the last
    # one's direction); none before the first token.
    last_switch_at = {s["position"]: s["direction"] for s in result["switches"] if 1 <= s["position"] < n}
    for direction in ("slm_to_llm", "llm_to_slm"):
        expected[("ray_rstitch_switches_total", (("direction", direction),))] = stats[f"switches_{direction}"]
        expected[("ray_rstitch_switch_latency_seconds_count", (("direction", direction),))] = \
            list(last_switch_at.values()).count(direction)

    def moved(scraped):
        return {key: scraped.get(key, 0.0) - before.get(key, 0.0) for key in expected}

    # Ray ships each process's metrics on its own report interval: poll until all have landed.
    after = wait_for(url, lambda s: moved(s) == expected)
    assert moved(after) == expected
    if policy == "rstitch":
        assert stats["switches_slm_to_llm"] > 0 and stats["llm"]["tokens"] > 0 and last_switch_at


def test_worker_gauges_return_to_zero_and_invalid_requests_are_counted(client, service):
    import grpc

    url = service[2]
    before = scrape(url)
    with pytest.raises(grpc.RpcError):
        list(client.generate(prompt=""))
    gauges = [(name, (("model", model),)) for name in ("ray_rstitch_worker_sessions", "ray_rstitch_worker_cached_tokens")
              for model in ("slm", "llm")]

    def landed(scraped) -> bool:
        # The router's counter and each worker's gauges come from different processes, each on its
        # own report interval: wait for all of them, not for one and then read the others.
        counted = delta(before, scraped, "ray_rstitch_requests_total", policy="unknown", outcome="invalid_argument")
        return counted >= 1 and all(key in scraped and scraped[key] == 0 for key in gauges)

    after = wait_for(url, landed)
    assert delta(before, after, "ray_rstitch_requests_total", policy="unknown", outcome="invalid_argument") == 1
    assert {key: after.get(key) for key in gauges} == {key: 0 for key in gauges}

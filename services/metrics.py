"""Prometheus metrics, exported through Ray's own path.

Each metric is a `ray.serve.metrics` object: Ray ships it to the node's metrics agent, which serves
it on the node's metrics export port (`ray start --metrics-export-port=8080`; KubeRay's PodMonitor
scrapes that port) with the `ray_` prefix Ray puts on every metric and the `deployment`, `replica`
and `application` labels Serve adds. So `rstitch_tokens` below is scraped as
`ray_rstitch_tokens_total{model="llm", ...}`. Counters only where possible: ratios (LLM token share,
switch rate) are PromQL over counters, as vLLM does for speculative decoding. Label values are
bounded (model, direction, policy, outcome); never a request id.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.serve import metrics

from rstitch_core.events import FinishEvent, Source, SwitchEvent, TokenEvent

ENTROPY_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
TOKEN_COUNT_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5]
DURATION_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
SHARE_BUCKETS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
SWITCH_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5]
STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5]

# Outcomes of a request besides the finish reasons eos / stop / length / context.
INVALID, BUSY, CANCELLED, ERROR = "invalid_argument", "resource_exhausted", "cancelled", "error"


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "counter" | "gauge" | "histogram"
    description: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    def exported(self, name: str) -> list[str]:
        """The series names Prometheus sees for this metric (Ray adds the `ray_` prefix)."""
        base = f"ray_{name}"
        return {"counter": [f"{base}_total"], "gauge": [base],
                "histogram": [f"{base}_bucket", f"{base}_sum", f"{base}_count"]}[self.kind]


FRONTEND_METRICS = {
    "rstitch_tokens": MetricSpec("counter", "Tokens emitted, by the model that wrote them.", ("model",)),
    "rstitch_requests": MetricSpec("counter", "Requests by policy and outcome (a finish reason, "
                                   "invalid_argument, resource_exhausted, cancelled or error).", ("policy", "outcome")),
    "rstitch_switches": MetricSpec("counter", "Switches between the models.", ("direction",)),
    "rstitch_discarded_tokens": MetricSpec("counter", "SLM tokens discarded at SLM -> LLM switches."),
    "rstitch_drafted_tokens": MetricSpec("counter", "Draft tokens the LLM verified (speculative, verified).",
                                         ("policy",)),
    "rstitch_accepted_tokens": MetricSpec("counter", "Draft tokens the LLM kept.", ("policy",)),
    "rstitch_rolled_back_tokens": MetricSpec("counter", "Draft tokens the LLM rejected (both caches dropped "
                                             "them).", ("policy",)),
    "rstitch_forward_passes": MetricSpec("counter", "Forward passes of finished requests, by model "
                                         "(tokens per LLM pass = rstitch_tokens / this).", ("model",)),
    "rstitch_token_entropy": MetricSpec("histogram", "Normalized entropy of each emitted token's "
                                        "distribution, by the model that wrote it.", ("model",), tuple(ENTROPY_BUCKETS)),
    "rstitch_switch_latency_seconds": MetricSpec("histogram", "Gap in the token stream at a switch: from the "
                                                 "last token before it to the first token after it.",
                                                 ("direction",), tuple(SWITCH_BUCKETS)),
    "rstitch_time_to_first_token_seconds": MetricSpec("histogram", "Time from request to first token.",
                                                      ("policy",), tuple(TTFT_BUCKETS)),
    "rstitch_inter_token_latency_seconds": MetricSpec("histogram", "Time between consecutive emitted tokens.",
                                                      ("policy",), tuple(ITL_BUCKETS)),
    "rstitch_request_duration_seconds": MetricSpec("histogram", "Time from request to its end.",
                                                   ("policy", "outcome"), tuple(DURATION_BUCKETS)),
    "rstitch_request_llm_token_share": MetricSpec("histogram", "Share of a finished request's tokens written "
                                                  "by the LLM.", ("policy",), tuple(SHARE_BUCKETS)),
}
WORKER_METRICS = {
    "rstitch_worker_sessions": MetricSpec("gauge", "Sessions whose KV cache this replica holds.", ("model",)),
    "rstitch_worker_cached_tokens": MetricSpec("gauge", "Token positions held in this replica's KV caches.",
                                               ("model",)),
    "rstitch_worker_session_rebuilds": MetricSpec("counter", "Calls that found no cache for their session "
                                                  "and prefilled everything.", ("model",)),
    "rstitch_worker_session_evictions": MetricSpec("counter", "Sessions evicted to respect the replica's "
                                                   "memory bounds.", ("model",)),
    "rstitch_prefill_tokens": MetricSpec("counter", "Tokens fed in partial prefills (exact; the histogram's "
                                         "_sum is approximate in Ray's exporter).", ("model",)),
    "rstitch_partial_prefill_tokens": MetricSpec("histogram", "Tokens per partial prefill (the first pass of "
                                                 "each call), by model.", ("model",), tuple(TOKEN_COUNT_BUCKETS)),
    "rstitch_shadow_prefill_tokens": MetricSpec("counter", "Tokens fed by shadow prefills (while the other "
                                                "model held the turn).", ("model",)),
    "rstitch_worker_batch_size": MetricSpec("histogram", "Sessions in each batched forward pass of a worker.",
                                            ("model",), tuple(BATCH_BUCKETS)),
    "rstitch_worker_step_seconds": MetricSpec("histogram", "Wall time of each batched forward pass.", ("model",),
                                              tuple(STEP_BUCKETS)),
}


def _make(specs: dict[str, MetricSpec]) -> dict[str, object]:
    made = {}
    for name, spec in specs.items():
        if spec.kind == "histogram":
            made[name] = metrics.Histogram(name, spec.description, list(spec.buckets), tag_keys=spec.tags)
        else:
            cls = metrics.Counter if spec.kind == "counter" else metrics.Gauge
            made[name] = cls(name, spec.description, tag_keys=spec.tags)
    return made


class FrontendMetrics:
    """Request-level metrics, recorded by the front end as it streams each request."""

    def __init__(self):
        m = _make(FRONTEND_METRICS)
        self.tokens, self.requests, self.switches = m["rstitch_tokens"], m["rstitch_requests"], m["rstitch_switches"]
        self.discarded = m["rstitch_discarded_tokens"]
        self.drafted, self.accepted = m["rstitch_drafted_tokens"], m["rstitch_accepted_tokens"]
        self.rolled_back, self.passes = m["rstitch_rolled_back_tokens"], m["rstitch_forward_passes"]
        self.entropy = m["rstitch_token_entropy"]
        self.ttft = m["rstitch_time_to_first_token_seconds"]
        self.itl = m["rstitch_inter_token_latency_seconds"]
        self.duration = m["rstitch_request_duration_seconds"]
        self.llm_share = m["rstitch_request_llm_token_share"]
        self.switch_latency = m["rstitch_switch_latency_seconds"]

    def request(self, policy: str) -> RequestRecorder:
        return RequestRecorder(self, policy)


class RequestRecorder:
    """Records one request's events as they stream; `close` records how it ended."""

    def __init__(self, metrics: FrontendMetrics, policy: str):
        self.m, self.policy = metrics, policy
        self.last_token_at: float | None = None
        self.switched: str | None = None  # direction of a switch not yet followed by a token
        self.closed = False

    def token(self, event: TokenEvent, now: float) -> None:
        self.m.tokens.inc(1, {"model": event.source})
        self.m.entropy.observe(event.entropy, {"model": event.source})
        if self.last_token_at is not None:  # the first token's latency is the TTFT, recorded at the finish
            self.m.itl.observe(now - self.last_token_at, {"policy": self.policy})
            if self.switched is not None:
                self.m.switch_latency.observe(now - self.last_token_at, {"direction": self.switched})
        self.last_token_at, self.switched = now, None

    def switch(self, event: SwitchEvent) -> None:
        self.m.switches.inc(1, {"direction": event.direction})
        self.switched = event.direction

    def finish(self, event: FinishEvent) -> None:
        s = event.stats
        if s.generated_tokens:
            self.m.ttft.observe(s.time_to_first_token, {"policy": self.policy})
            self.m.llm_share.observe(s.llm_token_share, {"policy": self.policy})
        policy = {"policy": self.policy}
        for counter, value, tags in ((self.m.discarded, s.discarded_tokens, None),
                                     (self.m.drafted, s.drafted_tokens, policy),
                                     (self.m.accepted, s.accepted_tokens, policy),
                                     (self.m.rolled_back, s.rolled_back_tokens, policy),
                                     (self.m.passes, s.slm.forward_passes, {"model": "slm"}),
                                     (self.m.passes, s.llm.forward_passes, {"model": "llm"})):
            if value:  # Ray counters refuse an increment of 0
                counter.inc(value, tags)
        self.close(event.reason.value, s.total_seconds)

    def close(self, outcome: str, seconds: float) -> None:
        if self.closed:
            return
        self.closed = True
        self.m.requests.inc(1, {"policy": self.policy, "outcome": outcome})
        self.m.duration.observe(seconds, {"policy": self.policy, "outcome": outcome})


class WorkerMetrics:
    """A worker replica's state: sessions, cached tokens, rebuilds, evictions, prefill sizes."""

    def __init__(self, model: Source):
        m = _make(WORKER_METRICS)
        self.tags = {"model": model}
        self.sessions, self.cached_tokens = m["rstitch_worker_sessions"], m["rstitch_worker_cached_tokens"]
        self.rebuilds, self.evictions = m["rstitch_worker_session_rebuilds"], m["rstitch_worker_session_evictions"]
        self.prefill = m["rstitch_partial_prefill_tokens"]
        self.prefill_tokens = m["rstitch_prefill_tokens"]
        self.shadow_tokens = m["rstitch_shadow_prefill_tokens"]
        self.batch_size, self.step_seconds = m["rstitch_worker_batch_size"], m["rstitch_worker_step_seconds"]

    def step(self, sessions: int, tokens: int, seconds: float) -> None:
        """One batched pass (called from the scheduler thread)."""
        self.batch_size.observe(sessions, self.tags)
        self.step_seconds.observe(seconds, self.tags)

    def state(self, sessions: int, cached_tokens: int) -> None:
        self.sessions.set(sessions, self.tags)
        self.cached_tokens.set(cached_tokens, self.tags)

    def call(self, prefill_tokens: int, rebuilt: bool) -> None:
        if prefill_tokens:
            self.prefill.observe(prefill_tokens, self.tags)
            self.prefill_tokens.inc(prefill_tokens, self.tags)
        if rebuilt:
            self.rebuilds.inc(1, self.tags)

    def shadow(self, tokens: int) -> None:
        self.shadow_tokens.inc(tokens, self.tags)

    def evicted(self) -> None:
        self.evictions.inc(1, self.tags)

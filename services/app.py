"""The one builder of the Serve app: `serve run deploy/serve_config.yaml`, `rstitch serve` and the
RayService all call build_app(args)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from rstitch_core.config import DEFAULT_THRESHOLD
from services.frontend import Frontend
from services.http_door import HTTPDoor, api_key_from_env
from services.openai_api import build_http_app
from services.worker import LLMWorker, SLMWorker, WorkerConfig

logger = logging.getLogger(__name__)

# Like the generated rstitch.v1.rstitch_pb2_grpc function, but unparseable requests reach the front end
# (which answers INVALID_ARGUMENT) instead of failing as INTERNAL in the gRPC layer.
GRPC_SERVICER = "services.grpc_api.add_RStitchServicer_to_server"
GRPC_PORT = 9000
HTTP_PORT = 8000  # Serve's HTTP proxy: the OpenAI-compatible API (services.openai_api)
# Every call of one session must reach the replica holding its KV cache: consistent hashing on
# the session id, and no fallback replica (a fallback would only rebuild the cache elsewhere).
SESSION_AFFINITY = RequestRouterConfig(
    request_router_class="ray.serve.experimental.consistent_hash_router:ConsistentHashRouter",
    request_router_kwargs={"num_fallback_replicas": 0},
)


@dataclass(frozen=True)
class AppConfig:
    """Serve args (the `args:` of a Serve config). Model sources None = the embedded default pair."""

    slm: str | None = None
    llm: str | None = None
    # torch | llamacpp | auto: llama.cpp on a CPU for GGUF files (the embedded pair), else torch.
    # rstitch serve resolves it and states the choice; a worker given auto applies the same rule.
    backend: str = "auto"
    dtype: str = "auto"  # rstitch serve resolves it (saved profiles, else bf16); a worker resolves it to bf16/fp16
    # "DTYPE[:N]": passes of >= N tokens on a copy in DTYPE (CPUs that emulate bf16); rstitch serve
    # resolves auto from the saved profiles, a worker given auto runs without a copy.
    prefill: str = "auto"
    slm_device: str = "auto"
    llm_device: str = "auto"
    slm_num_gpus: float = 0.0  # fractional values let both workers share one GPU
    llm_num_gpus: float = 0.0
    slm_num_cpus: float = 0.5
    llm_num_cpus: float = 0.5
    frontend_num_cpus: float = 0.1
    slm_replicas: int = 1
    llm_replicas: int = 1
    llm_autoscaling: dict | None = None  # Serve autoscaling_config for the LLM workers
    slm_resources: dict | None = None  # custom Ray resources, e.g. {"slm_node": 1} on KubeRay
    llm_resources: dict | None = None
    frontend_resources: dict | None = None  # e.g. {"frontend_group": 1} offered only by the head pod
    max_sessions: int = 64
    max_concurrent_requests: int = 64  # per front-end replica; beyond it RESOURCE_EXHAUSTED
    max_cached_tokens: int = 262_144
    threads: int | None = None  # CPU threads of each worker's passes (None: every core it may use)
    default_threshold: float = DEFAULT_THRESHOLD  # tau for requests that leave routing.threshold unset
    router: str | None = None  # R-Stitch+ router file for POLICY_RSTITCH_PLUS; loaded by the SLM worker
    batching: bool = True  # each worker runs its sessions' passes as one batched pass per step
    max_batch_tokens: int = 8192  # tokens one worker step feeds (a longer single pass runs alone)
    # While the SLM holds the turn, the LLM worker prefills its tokens in the background once this
    # many are unseen, so a hand-over pass feeds about one token (0: off).
    shadow_prefill_tokens: int = 0
    # A saved `rstitch profile` file: speculative/verified requests that leave draft_tokens unset
    # choose each draft's length from it, priced at the LLM worker's current batch (None: off).
    cost_profile: str | None = None
    # The model id clients name in `model` (None: "SLM-LLM" from the pair's names, a valid Hugging Face repo name).
    served_model_name: str | None = None

    def __post_init__(self) -> None:
        tau = self.default_threshold
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or not 0 <= tau <= 1:
            raise ValueError(f"default_threshold must be a number in [0, 1], got {tau!r}")
        for name in ("slm_num_gpus", "llm_num_gpus", "slm_num_cpus", "llm_num_cpus", "frontend_num_cpus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("slm_replicas", "llm_replicas", "max_concurrent_requests"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for role in ("slm", "llm"):  # the workers' own fields (sessions, cache, backend, dtype, ...): their checks
            self.worker(role)
        name = self.served_model_name
        if name is not None and not (isinstance(name, str) and 0 < len(name) <= 256 and name.isprintable()
                                     and name.strip() == name):
            raise ValueError(f"served_model_name must be a printable string of 1 to 256 characters without "
                             f"surrounding spaces, got {name!r:.80}")
        value = self.shadow_prefill_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"shadow_prefill_tokens must be an integer >= 0 (0: off), got {value!r}")

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> AppConfig:
        args = dict(args or {})
        if "torch_threads" in args and "threads" not in args:  # the old spelling, from before llama.cpp
            args["threads"] = args.pop("torch_threads")
        if "batch_linger_s" in args:  # workers step their sessions now: no timer to set
            logger.warning("app arg batch_linger_s=%r is ignored: a worker's step runs every waiting pass "
                           "without a timer (see max_batch_tokens)", args.pop("batch_linger_s"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown app args {unknown}; accepted: {sorted(known)}")
        return cls(**args)

    def worker(self, role: str) -> WorkerConfig:
        return WorkerConfig(getattr(self, role), backend=self.backend, dtype=self.dtype,
                            prefill="off" if self.prefill == "auto" else self.prefill,
                            device=getattr(self, f"{role}_device"), max_sessions=self.max_sessions,
                            max_cached_tokens=self.max_cached_tokens, threads=self.threads,
                            router=self.router if role == "slm" else None, batching=self.batching,
                            max_batch_tokens=self.max_batch_tokens)

    def actor_options(self, role: str) -> dict:
        options = {"num_cpus": getattr(self, f"{role}_num_cpus"), "num_gpus": getattr(self, f"{role}_num_gpus")}
        if getattr(self, f"{role}_resources"):
            options["resources"] = dict(getattr(self, f"{role}_resources"))
        return options


class ServedFrontend(Frontend):
    """The Frontend as Serve's ingress: gRPC through its methods, HTTP through the OpenAI app."""

    def __serve_build_asgi_app__(self):
        """The HTTP front end, built by Serve once the replica is constructed (see build_app),
        behind its door (services.http_door: API key, media type, size, slow bodies)."""
        app = build_http_app(self)
        app.add_middleware(HTTPDoor, api_key=api_key_from_env())
        return app


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Frontend (gRPC and HTTP ingress) bound to an SLMWorker and an LLMWorker deployment. (Serve
    calls an app builder with exactly one argument.)"""
    return bind_app(AppConfig.from_args(args))


def bind_app(cfg: AppConfig, llm_class: type = LLMWorker) -> serve.Application:
    """build_app's graph for a checked config; `llm_class`: the LLM worker's class (a subclass in
    tests that inject faults)."""
    worker_options = dict(max_ongoing_requests=4 * cfg.max_sessions, request_router_config=SESSION_AFFINITY)
    slm = serve.deployment(SLMWorker, name="SLMWorker", num_replicas=cfg.slm_replicas,
                           ray_actor_options=cfg.actor_options("slm"), **worker_options)
    llm_scale = ({"autoscaling_config": cfg.llm_autoscaling} if cfg.llm_autoscaling
                 else {"num_replicas": cfg.llm_replicas})
    llm = serve.deployment(llm_class, name="LLMWorker", ray_actor_options=cfg.actor_options("llm"),
                           **llm_scale, **worker_options)
    # Serve's own queue admits more than the front end runs, so excess requests get a clear
    # RESOURCE_EXHAUSTED from the front end instead of waiting in a queue.
    frontend_options = {"num_cpus": cfg.frontend_num_cpus}
    if cfg.frontend_resources:
        frontend_options["resources"] = dict(cfg.frontend_resources)
    # serve.ingress() without an app: Serve asks the constructed replica for its FastAPI app
    # (ServedFrontend.__serve_build_asgi_app__), so HTTP routes and gRPC Generate share one replica and path.
    frontend = serve.deployment(serve.ingress()(ServedFrontend), name="Frontend",
                              max_ongoing_requests=2 * cfg.max_concurrent_requests, ray_actor_options=frontend_options)
    return frontend.bind(slm.bind(cfg.worker("slm")), llm.bind(cfg.worker("llm")), cfg.slm, cfg.llm,
                       cfg.default_threshold, cfg.max_concurrent_requests, cfg.shadow_prefill_tokens,
                       cfg.cost_profile, cfg.served_model_name)

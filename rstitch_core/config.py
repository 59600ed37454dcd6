"""Frozen, validated request configs: how to sample and how to route between the SLM and the LLM."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum

MAX_DRAFT_TOKENS = 64
MAX_LOGPROBS = 20  # alternatives per token a response may carry (OpenAI's and vLLM's limit)
DEFAULT_THRESHOLD = 0.02  # tau of a request that sets none (the server's default_threshold can change it)


class Policy(str, Enum):
    """Which model writes each token."""

    RSTITCH = "rstitch"  # entropy-gated switching in both directions (Algorithm 1)
    LLM = "llm"  # the large model only
    SLM = "slm"  # the small model only
    SPECULATIVE = "speculative"  # SLM drafts, LLM verifies; output distribution is the LLM's
    RSTITCH_PLUS = "rstitch+"  # R-Stitch+: where the SLM is uncertain, a learned router decides
    VERIFIED = "verified"  # SLM drafts while confident, the LLM verifies on its hand-over pass

    @property
    def stitches(self) -> bool:
        """Whether control moves between the models on entropy (rstitch and rstitch+)."""
        return self in (Policy.RSTITCH, Policy.RSTITCH_PLUS)

    @classmethod
    def parse(cls, value: str | Policy) -> Policy:
        """Accept a Policy or its string name; raise ValueError naming the accepted values."""
        return _parse_enum(cls, value, "policy", "policy")


class ConfigError(ValueError):
    """A config field a caller got wrong. `field` is its path ("threshold", "logit_bias"; None: no
    single field) and the message quotes the bad value; services translate it (gRPC INVALID_ARGUMENT,
    HTTP 400 with `param`) by these attributes, never by reading the text."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field or None

    def __reduce__(self):  # crosses process boundaries (Ray) with its field
        return type(self), (self.field, str(self))

    def under(self, prefix: str) -> ConfigError:
        """The same error one level down a request ("routing." + "threshold"): field and message prefixed."""
        message = str(self)
        if not self.field:  # the object as a whole: "rstitch: unknown field 'tau'; ..."
            return type(self)(prefix.rstrip("."), f"{prefix.rstrip('.')}: {message}")
        if not message.startswith(self.field):  # "unknown policy 'x'": name the field first
            message = f"{self.field}: {message}"
        return type(self)(prefix + self.field, f"{prefix}{message}")


class NoRouter(ConfigError):
    """rstitch+ asked of a process that holds no R-Stitch+ router."""


def _parse_enum(cls, value, what: str, field: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).strip().lower())
    except ValueError:
        accepted = ", ".join(member.value for member in cls)
        raise ConfigError(field, f"unknown {what} {value!r}; accepted: {accepted}") from None


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MIN_TEMPERATURE = 1e-5  # the floor of sampled decoding: below it, greedy


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are picked and when generation stops.

    temperature 0 means greedy, and so does any temperature below MIN_TEMPERATURE (as in vLLM):
    logits divided by 1e-300 overflow, and sampling would pick one token over and over. top_k 0
    and top_p 1.0 disable those filters. A seed makes sampled
    runs reproducible; without one each run draws a fresh seed. Stop strings end generation and are
    not part of the emitted text.

    The logits controls (rstitch_core/logits_processors.py) change every distribution a token is
    sampled or verified from, as vLLM defines them: presence/frequency penalties on the generated
    tokens, a repetition penalty on prompt and generated tokens, logit_bias ((token id, bias)
    pairs), min_p, EOS suppressed before min_tokens, and ignore_eos (EOS no longer ends
    generation). logprobs: return each generated token's log-probability and its `logprobs` most
    likely alternatives (None: none).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    min_p: float = 0.0
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        _require(_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens",
                 f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        _require(isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                 and self.temperature >= 0, "temperature",
                 f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        _require(isinstance(self.top_p, (int, float)) and math.isfinite(self.top_p)
                 and 0 < self.top_p <= 1, "top_p",
                 f"top_p must be in (0, 1], got {self.top_p!r}")
        _require(_is_int(self.top_k) and self.top_k >= 0, "top_k",
                 f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        _require(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63), "seed",
                 f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for s in stop:
            _require(isinstance(s, str) and s != "", "stop", f"stop strings must be non-empty strings, got {s!r}")
        object.__setattr__(self, "stop", stop)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _require(_is_number(value) and -2 <= value <= 2, name, f"{name} must be a number in [-2, 2], got {value!r}")
        _require(_is_number(self.repetition_penalty) and 0 < self.repetition_penalty <= 2, "repetition_penalty",
                 f"repetition_penalty must be a number in (0, 2] (1 = off), got {self.repetition_penalty!r}")
        _require(_is_number(self.min_p) and 0 <= self.min_p <= 1, "min_p", f"min_p must be a number in [0, 1], got {self.min_p!r}")
        _require(_is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_new_tokens, "min_tokens",
                 f"min_tokens must be an integer in [0, max_new_tokens = {self.max_new_tokens}], got {self.min_tokens!r}")
        _require(isinstance(self.ignore_eos, bool), "ignore_eos", f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        _require(self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS), "logprobs",
                 f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        pairs = []
        for pair in bias:
            _require(isinstance(pair, (tuple, list)) and len(pair) == 2 and _is_int(pair[0]) and pair[0] >= 0
                     and _is_number(pair[1]) and -100 <= pair[1] <= 100, "logit_bias",
                     f"logit_bias maps token ids >= 0 to numbers in [-100, 100], got {pair!r}")
            pairs.append((int(pair[0]), float(pair[1])))
        object.__setattr__(self, "logit_bias", tuple(sorted(pairs)))

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    @property
    def controls_logits(self) -> bool:
        """Whether any logits control is set (otherwise distributions are the models' own)."""
        return (self.presence_penalty != 0 or self.frequency_penalty != 0 or self.repetition_penalty != 1
                or bool(self.logit_bias) or self.min_tokens > 0)


class Acceptance(str, Enum):
    """Which drafts the LLM keeps when it verifies them (speculative and verified)."""

    EXACT = "exact"  # greedy: the LLM's own token; sampled: rejection sampling (the LLM's distribution)
    RELAXED = "relaxed"  # also keep a draft the LLM gives >= relaxed_ratio x its top token's probability

    @classmethod
    def parse(cls, value: str | Acceptance) -> Acceptance:
        """Accept an Acceptance or its string name; raise ValueError naming the accepted values."""
        return _parse_enum(cls, value, "acceptance rule", "acceptance")


DEFAULT_DRAFT_TOKENS = {Policy.SPECULATIVE: 4, Policy.VERIFIED: 8}


@dataclass(frozen=True)
class RoutingParams:
    """Which policy routes tokens, its entropy threshold tau, the draft limit and the acceptance rule.

    draft_tokens None is the policy's default (speculative 4, verified 8; with a cost profile the
    verified policy chooses each draft's length itself, up to this limit). relaxed_ratio applies to
    the relaxed rule only: 1 keeps only the LLM's top token (as exact, greedy), 0 keeps every draft.
    """

    # verified by default: the LLM's own output (exact acceptance), drafting only where a cost
    # profile says drafts pay; rstitch, the paper's loop, trades accuracy for speed.
    policy: Policy = Policy.VERIFIED
    threshold: float = DEFAULT_THRESHOLD
    draft_tokens: int | None = None
    acceptance: Acceptance = Acceptance.EXACT
    relaxed_ratio: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy.parse(self.policy))
        object.__setattr__(self, "acceptance", Acceptance.parse(self.acceptance))
        _require(isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
                 and math.isfinite(self.threshold) and 0 <= self.threshold <= 1, "threshold",
                 f"threshold (tau) must be a number in [0, 1], got {self.threshold!r}")
        _require(self.draft_tokens is None or (_is_int(self.draft_tokens)
                                               and 1 <= self.draft_tokens <= MAX_DRAFT_TOKENS), "draft_tokens",
                 f"draft_tokens must be an integer in [1, {MAX_DRAFT_TOKENS}], got {self.draft_tokens!r}")
        _require(isinstance(self.relaxed_ratio, (int, float)) and not isinstance(self.relaxed_ratio, bool)
                 and math.isfinite(self.relaxed_ratio) and 0 <= self.relaxed_ratio <= 1, "relaxed_ratio",
                 f"relaxed_ratio must be a number in [0, 1], got {self.relaxed_ratio!r}")

    @property
    def cost_aware(self) -> bool:
        """Whether a cost profile may choose each draft's length (up to draft_limit): for the
        drafting policies, unless the request pins draft_tokens."""
        return self.policy in (Policy.SPECULATIVE, Policy.VERIFIED) and self.draft_tokens is None

    @property
    def draft_limit(self) -> int:
        """The most tokens one draft may hold (the policy's default when draft_tokens is unset)."""
        return self.draft_tokens or DEFAULT_DRAFT_TOKENS.get(self.policy, 4)

    @classmethod
    def resolve(cls, router_tau: float | None, default_threshold: float = DEFAULT_THRESHOLD,
                **fields) -> RoutingParams:
        """A request's routing from the fields it set (None or absent: unset), with the defaults and
        the R-Stitch+ rule applied, the one place they live: rstitch+ runs at the tau its router was
        trained for (`router_tau`; None: this process holds no router, NoRouter), so a threshold set
        with it is refused; any other policy without a threshold gets `default_threshold`.
        ConfigError names the field."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(None, f"unknown field {unknown[0]!r}; accepted: "
                                    f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        values = {name: value for name, value in fields.items() if value is not None}
        policy = Policy.parse(values.get("policy", cls.policy))
        if policy is Policy.RSTITCH_PLUS:
            tau = "" if router_tau is None else f" = {router_tau:g}"
            _require("threshold" not in values, "threshold", f"threshold must be unset for policy rstitch+ (it runs "
                     f"at its router's tau{tau}), got {values.get('threshold')!r:.80}")
            check_router(policy, router_tau is not None)
            values["threshold"] = router_tau
        return cls(**{"threshold": default_threshold, **values})


def check_router(policy: Policy, has_router: bool) -> None:
    """A router goes with the rstitch+ policy and only with it: NoRouter / ConfigError naming policy."""
    if policy is Policy.RSTITCH_PLUS and not has_router:
        raise NoRouter("policy", "the rstitch+ policy needs a router (made by `rstitch router train`), and none "
                                 "is loaded here")
    _require(not has_router or policy is Policy.RSTITCH_PLUS, "policy",
             f"a router only applies to the rstitch+ policy, not {policy.value!r}")


def parse_routing_spec(spec: str, threshold: float = RoutingParams.threshold,
                       draft_tokens: int | None = None) -> RoutingParams:
    """"POLICY[:relaxed=R][:k=N][:tau=T]" -> RoutingParams, e.g. "verified:relaxed=0.3" or
    "speculative:k=8" (benchmarks and evaluations name their configurations this way; tau=T overrides
    `threshold`). ValueError names the bad part."""
    policy, *options = spec.strip().split(":")
    extra: dict = {"draft_tokens": draft_tokens}
    for option in options:
        name, _, value = option.partition("=")
        try:
            if name == "relaxed":
                extra.update(acceptance=Acceptance.RELAXED, relaxed_ratio=float(value))
            elif name == "k":
                extra["draft_tokens"] = int(value)
            elif name == "tau":
                threshold = float(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{spec!r}: options are relaxed=RATIO, k=DRAFT_TOKENS and tau=THRESHOLD, "
                             f"got {option!r}") from None
    return RoutingParams(policy=Policy.parse(policy), threshold=threshold, **extra)

"""The OpenAI fields beyond a prompt and its budget: logits controls, logprobs, n, roles, and the
fields this server refuses. Every field a client may send is either honoured or refused with a
400 naming it; nothing known is silently dropped (the README's table lists them).
"""

from __future__ import annotations

from typing import Any, Callable

from rstitch_core.config import MAX_LOGPROBS, SamplingParams

MAX_N = 16  # choices per prompt
MAX_CHOICES = 64  # choices per request (prompts x n): each is a generation under the concurrency limit
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

# Fields that ask for what this server does not do: refused unless sent as their "off" value.
_OFF: dict[str, Callable[[Any], bool]] = {
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or v == {"type": "text"},
    "suffix": lambda v: v in (None, ""),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
    "prompt_logprobs": lambda v: v is None,
    "use_beam_search": lambda v: v in (None, False),
    "truncate_prompt_tokens": lambda v: v is None,
    "allowed_token_ids": lambda v: v is None,
    "bad_words": lambda v: v in (None, []),
    "stop_token_ids": lambda v: v in (None, []),
    "guided_json": lambda v: v is None, "guided_regex": lambda v: v is None,
    "guided_choice": lambda v: v is None, "guided_grammar": lambda v: v is None,
    "structured_outputs": lambda v: v is None,
}
_WHY = {"tools": "no tool calling", "tool_choice": "no tool calling", "functions": "no function calling",
        "function_call": "no function calling", "response_format": "only {'type': 'text'}: no JSON mode or schema",
        "suffix": "no insertion", "audio": "text only", "modalities": "text only", "prediction": "no predicted outputs",
        "prompt_logprobs": "use echo with logprobs on /v1/completions", "use_beam_search": "no beam search"}
# Fields of the other endpoint that change the answer: refused rather than ignored.
_CHAT_ONLY = ("top_logprobs",)
_COMPLETION_ONLY = ("echo",)


def refuse_unsupported(req: dict, endpoint: str, error: Callable[[str, str], Exception]) -> None:
    """Raise error(param, message) for the first field asking for what this server does not do."""
    for name, off in _OFF.items():
        if name in req and not off(req[name]):
            why = _WHY.get(name, "a structured-output or vLLM option this server does not implement")
            raise error(name, f"{name} is not supported by this server ({why}), got {req[name]!r:.80}")
    other = _COMPLETION_ONLY if endpoint == "chat" else _CHAT_ONLY
    for name in other:
        if req.get(name) not in (None, False):
            where = "/v1/completions" if endpoint == "chat" else "/v1/chat/completions"
            raise error(name, f"{name} applies to {where} only, got {req[name]!r:.80}")
    best_of = req.get("best_of")
    if best_of is not None and best_of != req.get("n", 1):
        raise error("best_of", f"best_of must equal n (no best-of selection here), got {best_of!r:.80}")


def chat_role(i: int, role: Any, error: Callable[[str, str], Exception]) -> Any:
    """The chat template's role for an OpenAI role: developer is the system role (what current
    OpenAI SDKs send for instructions); tool and unknown roles are refused."""
    if not isinstance(role, str):
        return role  # validate_messages names it
    if role not in ROLES:
        raise error(f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(ROLES)} (no tool calling "
                                           f"here), got {role!r:.80}")
    return ROLES[role]


def n_choices(req: dict, error: Callable[[str, str], Exception]) -> int:
    n = req.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise error("n", f"n must be an integer in [1, {MAX_N}], got {n!r:.80}")
    return n


def logprobs_field(req: dict, endpoint: str, error: Callable[[str, str], Exception]) -> int | None:
    """SamplingParams.logprobs: chat `logprobs: true` with `top_logprobs` alternatives, or
    completions' `logprobs: N` (the chosen token plus N alternatives); None when not asked."""
    if endpoint == "chat":
        on, top = req.get("logprobs"), req.get("top_logprobs")
        if on is not None and not isinstance(on, bool):
            raise error("logprobs", f"logprobs must be true or false on /v1/chat/completions, got {on!r:.80}")
        if top is not None and not on:
            raise error("top_logprobs", f"top_logprobs needs logprobs: true, got top_logprobs {top!r:.80}")
        return _count("top_logprobs", top or 0, error) if on else None
    value = req.get("logprobs")
    return None if value is None else _count("logprobs", value, error)


def _count(name: str, value: Any, error) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS:
        raise error(name, f"{name} must be an integer in [0, {MAX_LOGPROBS}], got {value!r:.80}")
    return value


def controls(req: dict, vocab_size: int | None, error: Callable[[str, str], Exception]) -> dict:
    """SamplingParams' logits controls from the OpenAI (and vLLM extension) fields, each checked
    alone so its error names the field."""
    out: dict = {}
    for name in ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_p", "min_tokens", "ignore_eos"):
        if req.get(name) is not None:
            out[name] = req[name]
            try:
                SamplingParams(**{name: req[name]}, **({"max_new_tokens": 1 << 30} if name == "min_tokens" else {}))
            except ValueError as err:
                raise error(name, str(err)) from None
    bias = req.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise error("logit_bias", f"logit_bias must be an object of token id -> bias, got {bias!r:.80}")
        pairs = []
        for key, value in bias.items():
            token = int(key) if isinstance(key, str) and key.strip().isdigit() else None
            if token is None or (vocab_size is not None and token >= vocab_size):
                raise error("logit_bias", f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r:.80}")
            pairs.append((token, value))
        try:
            out["logit_bias"] = SamplingParams(logit_bias=tuple(pairs)).logit_bias
        except ValueError as err:
            raise error("logit_bias", str(err)) from None
    return out

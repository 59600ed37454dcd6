"""The one translation between the gRPC messages (rstitch.v1) and the core's configs and events.

Servers parse requests with services.request_parsing and answer with the *_response() builders;
clients call build_request() and ResultBuilder / collect_responses(), which rebuild the core's own
Generation so that a result fetched over gRPC has exactly the layout of `rstitch generate --json`.
Imports no ray and no torch.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Iterable, Iterator, Sequence, TypeVar

from rstitch.v1 import rstitch_pb2 as pb
from rstitch_core.config import Acceptance, Policy, RoutingParams, SamplingParams
from rstitch_core.events import Event, FinishEvent, FinishReason, GenerationStats, ModelStats, SwitchEvent, TokenEvent
from rstitch_core.generation import Generation
from rstitch_core.prompts import validate_messages

POLICIES = {pb.POLICY_UNSPECIFIED: RoutingParams.policy, pb.POLICY_RSTITCH: Policy.RSTITCH,
            pb.POLICY_LLM: Policy.LLM, pb.POLICY_SLM: Policy.SLM, pb.POLICY_SPECULATIVE: Policy.SPECULATIVE,
            pb.POLICY_RSTITCH_PLUS: Policy.RSTITCH_PLUS, pb.POLICY_VERIFIED: Policy.VERIFIED}
POLICY_ENUMS = {policy: number for number, policy in POLICIES.items() if number != pb.POLICY_UNSPECIFIED}
ACCEPTANCES = {pb.ACCEPTANCE_UNSPECIFIED: Acceptance.EXACT, pb.ACCEPTANCE_EXACT: Acceptance.EXACT,
               pb.ACCEPTANCE_RELAXED: Acceptance.RELAXED}
ACCEPTANCE_ENUMS = {Acceptance.EXACT: pb.ACCEPTANCE_EXACT, Acceptance.RELAXED: pb.ACCEPTANCE_RELAXED}
MODELS = {"slm": pb.MODEL_SLM, "llm": pb.MODEL_LLM}
DIRECTIONS = {"slm_to_llm": pb.SWITCH_DIRECTION_SLM_TO_LLM, "llm_to_slm": pb.SWITCH_DIRECTION_LLM_TO_SLM}
FINISH_REASONS = {FinishReason.EOS: pb.FINISH_REASON_EOS, FinishReason.STOP: pb.FINISH_REASON_STOP,
                  FinishReason.LENGTH: pb.FINISH_REASON_LENGTH, FinishReason.CONTEXT: pb.FINISH_REASON_CONTEXT}

T = TypeVar("T")


def build_request(prompt: str | None = None, messages: Sequence[dict] | None = None,
                  sampling: SamplingParams = SamplingParams(), routing: RoutingParams = RoutingParams(),
                  request_id: str = "") -> pb.GenerateRequest:
    """A GenerateRequest with every optional field set from the (already validated) dataclasses.

    Give exactly one of prompt or messages; messages are checked like the core checks them
    (ValueError). An empty prompt is sent as is and rejected by the server.
    """
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of a prompt or chat messages")
    req = pb.GenerateRequest(request_id=request_id)
    if prompt is not None:
        req.prompt = prompt
    else:
        req.messages.SetInParent()  # an empty list still selects the messages branch of the oneof
        req.messages.messages.extend(pb.ChatMessage(**m) for m in validate_messages(messages))
    s = req.sampling
    s.max_new_tokens, s.temperature, s.top_p, s.top_k = (sampling.max_new_tokens, sampling.temperature,
                                                         sampling.top_p, sampling.top_k)
    if sampling.seed is not None:
        s.seed = sampling.seed
    s.stop.extend(sampling.stop)
    s.presence_penalty, s.frequency_penalty, s.repetition_penalty = (
        sampling.presence_penalty, sampling.frequency_penalty, sampling.repetition_penalty)
    s.min_p, s.min_tokens, s.ignore_eos = sampling.min_p, sampling.min_tokens, sampling.ignore_eos
    s.logit_bias.update(dict(sampling.logit_bias))
    if sampling.logprobs is not None:
        s.logprobs = sampling.logprobs
    r = req.routing
    r.policy, r.acceptance = POLICY_ENUMS[routing.policy], ACCEPTANCE_ENUMS[routing.acceptance]
    if routing.draft_tokens is not None:
        r.draft_tokens = routing.draft_tokens
    if routing.acceptance is Acceptance.RELAXED:
        r.relaxed_ratio = routing.relaxed_ratio
    if routing.policy is not Policy.RSTITCH_PLUS:  # rstitch+ runs at the server's router's tau
        r.threshold = routing.threshold
    return req


# ---- responses (server side) ------------------------------------------------------------------

def tokens_response(request_id: str, events: Sequence[TokenEvent]) -> pb.GenerateResponse:
    """One Tokens message for consecutive token events (index of the first, text concatenated)."""
    if not events:
        raise ValueError("tokens_response needs at least one token event")
    first = events[0].index
    if [e.index for e in events] != list(range(first, first + len(events))):
        raise ValueError(f"token events must be consecutive, got indices {[e.index for e in events]}")
    tokens = pb.Tokens(index=first, token_ids=[e.token_id for e in events], sources=[MODELS[e.source] for e in events],
                       entropies=[e.entropy for e in events], text="".join(e.text for e in events))
    if events[0].logprob is not None:  # asked for (sampling.logprobs): every token of the request has one
        tokens.logprobs.extend(e.logprob for e in events)
        tokens.top_logprobs.extend(pb.TopLogprobs(token_ids=[t for t, _ in e.top_logprobs or ()],
                                                  logprobs=[lp for _, lp in e.top_logprobs or ()]) for e in events)
    return pb.GenerateResponse(request_id=request_id, tokens=tokens)


def tokens_responses(request_id: str, events: Sequence[TokenEvent]) -> list[pb.GenerateResponse]:
    """One Tokens message per run of tokens from the same model: clients can colour text exactly,
    which a message mixing sources does not allow (its text is not split per token)."""
    runs: list[list[TokenEvent]] = []
    for e in events:
        if runs and runs[-1][-1].source == e.source:
            runs[-1].append(e)
        else:
            runs.append([e])
    return [tokens_response(request_id, run) for run in runs]


def switch_response(request_id: str, event: SwitchEvent) -> pb.GenerateResponse:
    return pb.GenerateResponse(request_id=request_id, switch_event=pb.SwitchEvent(
        direction=DIRECTIONS[event.direction], position=event.position, prefill_tokens=event.prefill_tokens))


def finish_response(request_id: str, event: FinishEvent) -> pb.GenerateResponse:
    """The last message: finish reason and the whole GenerationStats as Usage (text and ids are the
    concatenation of the Tokens messages, so they are not repeated)."""
    s = event.stats
    usage = pb.Usage(**{f.name: getattr(s, f.name) for f in fields(GenerationStats) if f.name not in ("slm", "llm")},
                     generated_tokens=s.generated_tokens, rolled_back_tokens=s.rolled_back_tokens,
                     slm=_model_usage(s.slm), llm=_model_usage(s.llm))
    return pb.GenerateResponse(request_id=request_id,
                               finish=pb.Finish(reason=FINISH_REASONS[event.reason], usage=usage))


def _model_usage(m: ModelStats) -> pb.ModelUsage:
    return pb.ModelUsage(**{f.name: getattr(m, f.name) for f in fields(ModelStats)})


# ---- responses (client side) ------------------------------------------------------------------

class ResultBuilder:
    """Turns the response stream back into core events and, at the end, a core Generation."""

    def __init__(self) -> None:
        self.request_id = ""
        self.tokens: list[TokenEvent] = []
        self.switches: list[SwitchEvent] = []
        self.text = ""
        self.finish: FinishEvent | None = None

    def add(self, resp: pb.GenerateResponse) -> list[Event]:
        """Core events for one response. Every token event gets an empty text except the last of
        its message, which carries the message's text (it is not split per token on the wire)."""
        if self.finish is not None:
            raise ValueError("a response arrived after the finish message")
        self.request_id = resp.request_id
        kind = resp.WhichOneof("event")
        if kind == "tokens":
            return self._add_tokens(resp.tokens)
        if kind == "switch_event":
            self.switches.append(_switch_event(resp.switch_event))
            return [self.switches[-1]]
        if kind == "finish":
            self.finish = FinishEvent(_enum_value(FINISH_REASONS, resp.finish.reason, "finish.reason"),
                                      self.text, tuple(t.token_id for t in self.tokens),
                                      _generation_stats(resp.finish.usage))
            return [self.finish]
        raise ValueError("a response carries no event (tokens, switch_event or finish)")

    def _add_tokens(self, t: pb.Tokens) -> list[TokenEvent]:
        if t.index != len(self.tokens):
            raise ValueError(f"tokens.index is {t.index} but {len(self.tokens)} tokens arrived before it")
        if not len(t.token_ids) == len(t.sources) == len(t.entropies):
            raise ValueError(f"tokens: {len(t.token_ids)} token_ids, {len(t.sources)} sources and "
                             f"{len(t.entropies)} entropies must have the same length")
        n = len(t.token_ids)
        if t.logprobs and not len(t.logprobs) == len(t.top_logprobs) == n:
            raise ValueError(f"tokens: {len(t.logprobs)} logprobs and {len(t.top_logprobs)} top_logprobs for "
                             f"{n} tokens")
        logprobs = [(lp, tuple(zip(top.token_ids, top.logprobs))) for lp, top in zip(t.logprobs, t.top_logprobs)]
        events = [TokenEvent(t.index + i, tok, t.text if i == n - 1 else "",
                             _enum_value(MODELS, src, "tokens.sources"), ent, *(logprobs[i] if logprobs else ()))
                  for i, (tok, src, ent) in enumerate(zip(t.token_ids, t.sources, t.entropies))]
        self.tokens.extend(events)
        self.text += t.text
        return events

    def events(self, responses: Iterable[pb.GenerateResponse]) -> Iterator[Event]:
        """Core events as the responses arrive (for streaming printers)."""
        for resp in responses:
            yield from self.add(resp)

    def generation(self) -> Generation:
        if self.finish is None:
            raise RuntimeError("the stream ended without a finish message")
        return Generation.collect([*self.tokens, *self.switches, self.finish])


def collect_responses(responses: Iterable[pb.GenerateResponse]) -> dict:
    """The whole stream as one dict with exactly the keys of Generation.to_dict()."""
    builder = ResultBuilder()
    for resp in responses:
        builder.add(resp)
    return builder.generation().to_dict()


def _switch_event(s: pb.SwitchEvent) -> SwitchEvent:
    return SwitchEvent(_enum_value(DIRECTIONS, s.direction, "switch_event.direction"), s.position, s.prefill_tokens)


def _generation_stats(u: pb.Usage) -> GenerationStats:
    scalars = {f.name: getattr(u, f.name) for f in fields(GenerationStats) if f.name not in ("slm", "llm")}
    return GenerationStats(**scalars, slm=_model_stats(u.slm), llm=_model_stats(u.llm))


def _model_stats(m: pb.ModelUsage) -> ModelStats:
    return ModelStats(**{f.name: getattr(m, f.name) for f in fields(ModelStats)})


def _enum_value(mapping: dict[T, int], number: int, path: str) -> T:
    """Core value for a proto enum number (the inverse of `mapping`)."""
    for value, n in mapping.items():
        if n == number:
            return value
    raise ValueError(f"{path}: unexpected enum value {number}")

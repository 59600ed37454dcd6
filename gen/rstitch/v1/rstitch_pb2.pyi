from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Policy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_UNSPECIFIED: _ClassVar[Policy]
    POLICY_RSTITCH: _ClassVar[Policy]
    POLICY_LLM: _ClassVar[Policy]
    POLICY_SLM: _ClassVar[Policy]
    POLICY_SPECULATIVE: _ClassVar[Policy]
    POLICY_RSTITCH_PLUS: _ClassVar[Policy]
    POLICY_VERIFIED: _ClassVar[Policy]

class Acceptance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCEPTANCE_UNSPECIFIED: _ClassVar[Acceptance]
    ACCEPTANCE_EXACT: _ClassVar[Acceptance]
    ACCEPTANCE_RELAXED: _ClassVar[Acceptance]

class Model(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_UNSPECIFIED: _ClassVar[Model]
    MODEL_SLM: _ClassVar[Model]
    MODEL_LLM: _ClassVar[Model]

class SwitchDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWITCH_DIRECTION_UNSPECIFIED: _ClassVar[SwitchDirection]
    SWITCH_DIRECTION_SLM_TO_LLM: _ClassVar[SwitchDirection]
    SWITCH_DIRECTION_LLM_TO_SLM: _ClassVar[SwitchDirection]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CONTEXT: _ClassVar[FinishReason]
POLICY_UNSPECIFIED: Policy
POLICY_RSTITCH: Policy
POLICY_LLM: Policy
POLICY_SLM: Policy
POLICY_SPECULATIVE: Policy
POLICY_RSTITCH_PLUS: Policy
POLICY_VERIFIED: Policy
ACCEPTANCE_UNSPECIFIED: Acceptance
ACCEPTANCE_EXACT: Acceptance
ACCEPTANCE_RELAXED: Acceptance
MODEL_UNSPECIFIED: Model
MODEL_SLM: Model
MODEL_LLM: Model
SWITCH_DIRECTION_UNSPECIFIED: SwitchDirection
SWITCH_DIRECTION_SLM_TO_LLM: SwitchDirection
SWITCH_DIRECTION_LLM_TO_SLM: SwitchDirection
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CONTEXT: FinishReason

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "sampling", "routing", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: Messages
    sampling: SamplingParams
    routing: RoutingParams
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Union[Messages, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., routing: _Optional[_Union[RoutingParams, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Messages(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "min_p", "min_tokens", "ignore_eos", "logprobs")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    min_p: float
    min_tokens: int
    ignore_eos: bool
    logprobs: int
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., min_p: _Optional[float] = ..., min_tokens: _Optional[int] = ..., ignore_eos: _Optional[bool] = ..., logprobs: _Optional[int] = ...) -> None: ...

class RoutingParams(_message.Message):
    __slots__ = ("policy", "threshold", "draft_tokens", "acceptance", "relaxed_ratio")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    RELAXED_RATIO_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    threshold: float
    draft_tokens: int
    acceptance: Acceptance
    relaxed_ratio: float
    def __init__(self, policy: _Optional[_Union[Policy, str]] = ..., threshold: _Optional[float] = ..., draft_tokens: _Optional[int] = ..., acceptance: _Optional[_Union[Acceptance, str]] = ..., relaxed_ratio: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "tokens", "switch_event", "finish")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SWITCH_EVENT_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tokens: Tokens
    switch_event: SwitchEvent
    finish: Finish
    def __init__(self, request_id: _Optional[str] = ..., tokens: _Optional[_Union[Tokens, _Mapping]] = ..., switch_event: _Optional[_Union[SwitchEvent, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ...) -> None: ...

class Tokens(_message.Message):
    __slots__ = ("index", "token_ids", "sources", "entropies", "text", "logprobs", "top_logprobs")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    ENTROPIES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    sources: _containers.RepeatedScalarFieldContainer[Model]
    entropies: _containers.RepeatedScalarFieldContainer[float]
    text: str
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TopLogprobs]
    def __init__(self, index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., sources: _Optional[_Iterable[_Union[Model, str]]] = ..., entropies: _Optional[_Iterable[float]] = ..., text: _Optional[str] = ..., logprobs: _Optional[_Iterable[float]] = ..., top_logprobs: _Optional[_Iterable[_Union[TopLogprobs, _Mapping]]] = ...) -> None: ...

class TopLogprobs(_message.Message):
    __slots__ = ("token_ids", "logprobs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class SwitchEvent(_message.Message):
    __slots__ = ("direction", "position", "prefill_tokens")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    direction: SwitchDirection
    position: int
    prefill_tokens: int
    def __init__(self, direction: _Optional[_Union[SwitchDirection, str]] = ..., position: _Optional[int] = ..., prefill_tokens: _Optional[int] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("reason", "usage")
    REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    reason: FinishReason
    usage: Usage
    def __init__(self, reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("tokens", "forward_passes", "forward_tokens", "prefill_tokens", "seconds", "rebuilds")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    FORWARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REBUILDS_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    forward_passes: int
    forward_tokens: int
    prefill_tokens: int
    seconds: float
    rebuilds: int
    def __init__(self, tokens: _Optional[int] = ..., forward_passes: _Optional[int] = ..., forward_tokens: _Optional[int] = ..., prefill_tokens: _Optional[int] = ..., seconds: _Optional[float] = ..., rebuilds: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "slm", "llm", "switches_slm_to_llm", "switches_llm_to_slm", "discarded_tokens", "drafted_tokens", "accepted_tokens", "time_to_first_token", "total_seconds", "rolled_back_tokens", "undrafted_rounds")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SLM_FIELD_NUMBER: _ClassVar[int]
    LLM_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_SLM_TO_LLM_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_LLM_TO_SLM_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNDRAFTED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    slm: ModelUsage
    llm: ModelUsage
    switches_slm_to_llm: int
    switches_llm_to_slm: int
    discarded_tokens: int
    drafted_tokens: int
    accepted_tokens: int
    time_to_first_token: float
    total_seconds: float
    rolled_back_tokens: int
    undrafted_rounds: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., slm: _Optional[_Union[ModelUsage, _Mapping]] = ..., llm: _Optional[_Union[ModelUsage, _Mapping]] = ..., switches_slm_to_llm: _Optional[int] = ..., switches_llm_to_slm: _Optional[int] = ..., discarded_tokens: _Optional[int] = ..., drafted_tokens: _Optional[int] = ..., accepted_tokens: _Optional[int] = ..., time_to_first_token: _Optional[float] = ..., total_seconds: _Optional[float] = ..., rolled_back_tokens: _Optional[int] = ..., undrafted_rounds: _Optional[int] = ...) -> None: ...

"""rstitch_core: entropy-guided trajectory stitching between a small and a large language model.

Imports torch, transformers and the standard library only (no ray, no grpc).
"""

from rstitch_core.config import Policy, RoutingParams, SamplingParams
from rstitch_core.engine import Engine, Generation
from rstitch_core.entropy import normalized_entropy
from rstitch_core.events import (Event, FinishEvent, FinishReason, GenerationStats, ModelStats,
                                 SwitchEvent, TokenEvent)
from rstitch_core.models.loading import check_pair, load_model
from rstitch_core.models.runner import ModelRunner
from rstitch_core.policies.router import RouterInput, SwitchRouter

__all__ = [
    "Engine", "Event", "FinishEvent", "FinishReason", "Generation", "GenerationStats", "ModelRunner",
    "ModelStats", "Policy", "RouterInput", "RoutingParams", "SamplingParams", "SwitchEvent",
    "SwitchRouter", "TokenEvent", "check_pair", "load_model", "normalized_entropy",
]

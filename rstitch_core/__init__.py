"""rstitch_core: entropy-guided trajectory stitching between a small and a large language model.

Needs torch, transformers and the standard library only (no ray, no grpc). Importing the package
or its torch-free modules (config, events, generation, prompts) loads no torch, so the gRPC client
(services.client) runs with only grpcio and protobuf: the names below that need torch are loaded
on first use (PEP 562).
"""

from __future__ import annotations

import importlib

from rstitch_core.config import Policy, RoutingParams, SamplingParams
from rstitch_core.events import Event, FinishEvent, FinishReason, GenerationStats, ModelStats, SwitchEvent, TokenEvent
from rstitch_core.generation import Generation

# name -> the module that defines it; each of these modules imports torch.
_LAZY = {"Engine": "rstitch_core.engine", "normalized_entropy": "rstitch_core.entropy",
         "check_pair": "rstitch_core.models.loading", "load_model": "rstitch_core.models.loading",
         "ModelRunner": "rstitch_core.models.runner", "RouterInput": "rstitch_core.router.switch",
         "SwitchRouter": "rstitch_core.router.switch"}

__all__ = [
    "Engine", "Event", "FinishEvent", "FinishReason", "Generation", "GenerationStats", "ModelRunner",
    "ModelStats", "Policy", "RouterInput", "RoutingParams", "SamplingParams", "SwitchEvent",
    "SwitchRouter", "TokenEvent", "check_pair", "load_model", "normalized_entropy",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'rstitch_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

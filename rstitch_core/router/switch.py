"""Extension point for R-Stitch+: a learned router consulted when the SLM is uncertain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True, slots=True)
class RouterInput:
    """What the router sees at an SLM position whose entropy exceeds tau."""

    hidden_state: torch.Tensor  # [D] the SLM's final hidden state at the last position
    context_length: int  # prompt + generated tokens so far
    num_generated: int
    entropy: float
    tokens_since_switch: int  # generated tokens since the last switch (or the start)


class SwitchRouter(Protocol):
    """Decides, where the SLM's entropy exceeds tau, whether the LLM takes over (True) or the SLM
    keeps its token (False). LLM -> SLM stays entropy-based."""

    def __call__(self, x: RouterInput) -> bool: ...

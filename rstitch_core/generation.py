"""A finished generation gathered from its events; torch-free, so the gRPC client can rebuild it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from rstitch_core.events import Event, FinishEvent, FinishReason, GenerationStats, Source, SwitchEvent, TokenEvent


@dataclass
class Generation:
    """A finished generation gathered from its events (CLI --json, tests, evaluation)."""

    text: str
    token_ids: list[int]
    sources: list[Source]
    entropies: list[float]
    finish_reason: FinishReason
    stats: GenerationStats
    switches: list[SwitchEvent] = field(default_factory=list)

    @classmethod
    def collect(cls, events: Iterable[Event]) -> Generation:
        """Gather token and switch events up to the finish event (RuntimeError if there is none)."""
        tokens: list[TokenEvent] = []
        switches: list[SwitchEvent] = []
        for event in events:
            if isinstance(event, TokenEvent):
                tokens.append(event)
            elif isinstance(event, SwitchEvent):
                switches.append(event)
            elif isinstance(event, FinishEvent):
                return cls(event.text, [t.token_id for t in tokens], [t.source for t in tokens],
                           [t.entropy for t in tokens], event.reason, event.stats, switches)
        raise RuntimeError("generation ended without a finish event")

    def to_dict(self) -> dict:
        """The layout of `rstitch generate --json` (and of a result fetched over gRPC)."""
        return {"text": self.text, "token_ids": self.token_ids, "sources": self.sources,
                "entropies": self.entropies, "finish_reason": self.finish_reason.value,
                "stats": self.stats.to_dict(),
                "switches": [{"direction": s.direction, "position": s.position,
                              "prefill_tokens": s.prefill_tokens} for s in self.switches]}

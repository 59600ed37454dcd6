"""Served, whether to draft at all is decided by measured throughput, in windows.

The cost profile prices one request's round from passes timed in isolation. Served, the requests
share the workers: with b of them, plain decoding batches all b into each LLM pass, while drafting
requests split between the SLM and LLM workers, whose passes on one device add up instead of
overlapping and batch fewer rows each. Measured on a 2-core AMX Xeon (docs/results.md) drafts won
1.2x at one stream and lost 0.64-0.86x at 4-16 streams, where the profile still projected gains.
Timing one request's rounds cannot see this (one request decoding plainly among drafting ones gets
none of plain decoding's batching), so the front end compares the whole: it runs all its
cost-aware requests in one mode for a window, counts the tokens it streamed, and per load bucket
(2-3, 4-7, 8-15, 16+ concurrent requests) keeps the mode that streamed more, measuring the
other again after `explore_every` windows, and after twice as many each time that confirms the
verdict (up to `max_explore_every`): a drafting window among plain ones is costly under load (one at
16 streams took a whole run down to 0.73x LLM-only, docs/results.md). For the same reason only the
lowest load the windows decide is sampled drafting straight away; a higher one only once the
nearest lower load measured drafting faster. Batching favours plain decoding more as the load
grows, so without that evidence the higher load runs plainly and the exploring schedule tests it.
A request alone has no batching for windows to see: below
`min_load` the profile's own pricing decides, as in-process (windows there lost most of verified's
gain: the first window, holding the prompt's prefill, made drafting look slow, docs/results.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

Mode = Literal["draft", "plain"]
MODES: tuple[Mode, Mode] = ("draft", "plain")


@dataclass
class DraftWindows:
    """One front end's drafting windows. `mode(load)` is asked at every round of every cost-aware
    request; `emitted(n)` counts the tokens the front end streamed."""

    window_s: float = 4.0
    explore_every: int = 8  # windows of the better mode before one of the other ...
    max_explore_every: int = 64  # ... doubling up to this while the verdict stands
    min_load: int = 2  # below it the windows stand aside: "draft", i.e. the profile decides
    decay: float = 0.7  # per window of the same bucket and mode
    clock: Callable[[], float] = time.perf_counter
    rates: dict[tuple[int, Mode], tuple[float, float]] = field(default_factory=dict)  # discounted tokens, s
    explored: dict[int, tuple[int, int]] = field(default_factory=dict)  # bucket: (windows since exploring, interval)
    best: dict[int, Mode] = field(default_factory=dict)  # bucket: the verdict of its last window
    current: tuple[int, Mode, float, int] | None = None  # bucket, mode, start, tokens at start
    tokens: int = 0
    last_emitted: float = float("-inf")  # when a token last streamed

    def __post_init__(self):
        if not self.window_s > 0 or not 0 < self.decay <= 1 or self.min_load < 1 \
                or not 1 <= self.explore_every <= self.max_explore_every:
            raise ValueError(f"need window_s > 0, decay in (0, 1], 1 <= explore_every <= max_explore_every and "
                             f"min_load >= 1, got {self.window_s!r}, {self.decay!r}, {self.explore_every!r} "
                             f"<= {self.max_explore_every!r}, {self.min_load!r}")

    @staticmethod
    def bucket(load: int) -> int:
        """Loads 1, 2-3, 4-7, 8-15, ... share a bucket: batches of similar size cost alike."""
        return max(1, load).bit_length()

    def emitted(self, num_tokens: int) -> None:
        self.tokens += num_tokens
        self.last_emitted = self.clock()

    def mode(self, load: int) -> Mode:
        """The mode for a round starting now at `load` concurrent requests."""
        if load < self.min_load:
            return "draft"
        now, bucket = self.clock(), self.bucket(load)
        if self.current is not None:
            b, mode, start, tokens = self.current
            if b == bucket and now - start < self.window_s:
                return mode
            # A sample: a window at one load, however long its rounds kept it open (plain calls
            # are long under load); a load change voids it, and so does idle time at its end.
            if b == bucket and now - self.last_emitted < self.window_s:
                total, seconds = self.rates.get((b, mode), (0.0, 0.0))
                self.rates[(b, mode)] = (total * self.decay + self.tokens - tokens,
                                         seconds * self.decay + now - start)
        mode = self._next(bucket)
        self.current = (bucket, mode, now, self.tokens)
        return mode

    def rate(self, load: int, mode: Mode) -> float | None:
        """Tokens per second the front end streamed in `mode` windows at this load (None: unmeasured)."""
        return self._rate(self.bucket(load), mode)

    def _rate(self, bucket: int, mode: Mode) -> float | None:
        total, seconds = self.rates.get((bucket, mode), (0.0, 0.0))
        return total / seconds if seconds > 0 else None

    def _next(self, bucket: int) -> Mode:
        plain, draft = self._rate(bucket, "plain"), self._rate(bucket, "draft")
        if plain is None:  # plain first: a load seen only briefly then runs as LLM-only would
            return "plain"
        if draft is None and self._draft_won_below(bucket):
            return "draft"
        best: Mode = "plain" if draft is None or plain >= draft else "draft"
        since, interval = self.explored.get(bucket, (0, self.explore_every))
        if best != self.best.setdefault(bucket, best):  # an exploring window overturned the verdict
            since, interval = 0, self.explore_every
        self.best[bucket] = best
        if since + 1 > interval:
            self.explored[bucket] = (0, min(2 * interval, self.max_explore_every))
            return "plain" if best == "draft" else "draft"
        self.explored[bucket] = (since + 1, interval)
        return best

    def _draft_won_below(self, bucket: int) -> bool:
        """Whether to sample drafting at a load before the exploring schedule does: at the lowest
        load the windows decide, or where the nearest lower load measured in both modes found
        drafting faster."""
        for b in range(bucket - 1, self.bucket(self.min_load) - 1, -1):
            plain, draft = self._rate(b, "plain"), self._rate(b, "draft")
            if plain is not None and draft is not None:
                return draft > plain
        return bucket <= self.bucket(self.min_load)

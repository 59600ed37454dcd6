"""Waiting on a condition in tests: poll it, with a bound for a hang (never an expected duration)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.01,
               message: Callable[[], str] | None = None) -> T:
    """The first truthy value `condition()` returns, polled every `interval` seconds.

    AssertionError (with `message()`, else the last value) if none comes within `timeout`: a bound
    for something that hangs, not how long it should take, so a machine ten times faster or slower
    passes unchanged."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if message else f"not within {timeout:g} s; last: {value!r}")
        time.sleep(interval)

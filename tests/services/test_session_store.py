"""The worker's session store on its own: no Ray, no model (the caches are stand-ins that record
what the store does to them; the served tests exercise it with real caches)."""

from concurrent.futures import Future

import pytest

from rstitch_core import RoutingParams, SamplingParams
from services.session_store import Session, SessionReleased, SessionStore, TurnCall, WorkerBusy


class FakeState:
    """What the store uses of a ModelState: the cached length, rollback, release and stats."""

    def __init__(self):
        self.num_cached, self.released, self.stats = 0, False, None

    def rollback(self, n):
        self.num_cached = min(self.num_cached, n)

    def release(self):
        self.released = True


class FakeSeq:
    def __init__(self, prompt):
        self.token_ids = list(prompt)

    def extend(self, ids):
        self.token_ids.extend(ids)


class FakeSampler:
    def set_state(self, state):
        self.state = state


def new_session(call: TurnCall) -> Session:
    return Session(FakeSeq(call.token_ids[:call.prompt_len]), FakeState(), FakeSampler())


def call(sid, tokens, num_cached=0, first=True):
    return TurnCall(sid, list(tokens), 2, num_cached, SamplingParams(), RoutingParams(), 64, frozenset(), first=first)


def store(**kw):
    changes = []
    s = SessionStore("llm", kw.pop("max_sessions", 4), kw.pop("max_cached_tokens", 1000), new_session,
                     on_change=lambda n, cached: changes.append((n, cached)), **kw)
    return s, changes


def test_a_held_session_is_reused_rolled_back_to_what_matches_and_extended():
    s, changes = store()
    a, rebuilt = s.checkout(call("a", [1, 2]))
    assert not rebuilt and a.busy and s.counters.turns == 1
    a.state.num_cached = 5  # the pass fed the prompt and three tokens the front end then rolled back
    a.seq.token_ids = [1, 2, 3, 4, 5]
    s.checkin(a)
    assert not a.busy
    again, rebuilt = s.checkout(call("a", [1, 2, 3, 4, 5, 6], num_cached=3, first=False))
    assert again is a and not rebuilt and a.state.num_cached == 3 and a.seq.token_ids == [1, 2, 3, 4, 5, 6]
    assert changes[-1] == (1, 3)


def test_a_missing_or_diverged_session_is_rebuilt_and_counted():
    s, _ = store()
    fresh, rebuilt = s.checkout(call("a", [1, 2, 3], first=False))  # the front end expected it held
    assert rebuilt and s.counters.rebuilds == 1 and fresh.seq.token_ids == [1, 2, 3]
    s.checkin(fresh)
    other, rebuilt = s.checkout(call("a", [1, 2, 9], first=False))  # the mirror no longer matches
    assert other is not fresh and fresh.state.released and rebuilt and s.counters.rebuilds == 2


def test_least_recently_used_idle_sessions_make_room_and_busy_ones_never_do():
    s, _ = store(max_sessions=2)
    a, _ = s.checkout(call("a", [1, 2]))
    b, _ = s.checkout(call("b", [1, 2]))
    s.checkin(a)
    c, _ = s.checkout(call("c", [1, 2]))  # a is idle and least recently used: evicted
    assert list(s.sessions) == ["b", "c"] and a.state.released and s.counters.evictions == 1
    with pytest.raises(WorkerBusy, match=r"llm worker holds 2 sessions, all mid-call \(max_sessions=2\)"):
        s.checkout(call("d", [1, 2]))
    assert s.evict("b") is False  # mid-call
    s.checkin(b)
    assert s.evict("b") is True and list(s.sessions) == ["c"]


def test_the_cached_token_limit_evicts_idle_sessions_on_checkin():
    s, _ = store(max_cached_tokens=10)
    a, _ = s.checkout(call("a", [1, 2]))
    a.state.num_cached = 8
    s.checkin(a)
    b, _ = s.checkout(call("b", [1, 2]))
    b.state.num_cached = 8
    s.checkin(b)  # 16 > 10: the least recently used idle one goes
    assert list(s.sessions) == ["b"] and s.cached_tokens == 8


def test_a_released_session_is_freed_and_cannot_come_back():
    s, changes = store()
    a, _ = s.checkout(call("a", [1, 2]))
    s.checkin(a)
    assert s.release("a") is True and a.state.released and s.is_released("a") and changes[-1] == (0, 0)
    with pytest.raises(SessionReleased, match="session a was released"):
        s.checkout(call("a", [1, 2, 3], first=False))  # a call that was in flight when the client left
    assert s.release("never-held") is False


def test_a_pass_still_running_keeps_its_session_busy_and_its_cache_until_it_ends():
    s, _ = store()
    a, _ = s.checkout(call("a", [1, 2]))
    a.forward = Future()  # the call was cancelled mid-pass: the pass goes on on its thread
    s.checkin(a)
    assert a.busy
    s.release("a")
    assert not a.state.released  # freeing it now would pull the cache from under the running pass
    a.forward.set_result(None)
    assert not a.busy and a.state.released

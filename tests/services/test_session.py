"""RemoteSession's transport details that need no model: how releases reach the workers."""

import asyncio

from services.session import Releases


class RecordingHandle:
    """A deployment handle that records each release call and the session id it is routed by."""

    def __init__(self, model: str, calls: list):
        self.model, self.calls, self.routed_by = model, calls, None

    def options(self, *, session_id: str) -> "RecordingHandle":
        routed = RecordingHandle(self.model, self.calls)
        routed.routed_by = session_id
        return routed

    @property
    def release(self):
        return self

    async def remote(self, session_ids: list[str]) -> int:
        self.calls.append((self.model, self.routed_by, tuple(session_ids)))
        return len(session_ids)


def test_releases_asked_for_in_one_loop_turn_go_out_as_one_call_per_replica():
    calls = []
    releases = Releases({m: RecordingHandle(m, calls) for m in ("slm", "llm")})

    async def burst():
        releases.add("a", {"slm": "slm-0", "llm": "llm-1"})
        releases.add("b", {"slm": "slm-0", "llm": "llm-2"})
        releases.add("c", {"slm": "slm-0", "llm": None})  # its first LLM call never answered
        releases.add("d", {"slm": "slm-0"})  # never called the LLM: nothing to free there
        while releases.pending or releases.tasks:
            await asyncio.sleep(0)  # one loop turn: the flush, then the calls
        releases.add("e", {"slm": "slm-0"})  # a later turn: a batch of its own
        while releases.pending or releases.tasks:
            await asyncio.sleep(0)

    asyncio.run(burst())
    assert sorted(calls) == sorted([
        ("slm", "a", ("a", "b", "c", "d")),  # routed by its first session: the replica all four are on
        ("llm", "a", ("a",)), ("llm", "b", ("b",)), ("llm", "c", ("c",)),
        ("slm", "e", ("e",)),
    ])

"""A killed LLM worker (kill -9) whose replacement loads slowly: the streams in flight are not
failed after the session's fixed retries (0.25 s doubling, 15.75 s in all) but complete, with
exactly the tokens of an uninterrupted run, once the replacement runs. Serve's router holds a call
while its deployment has no running replica, so the retries only count calls that fail fast."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time

import psutil
from ray import cloudpickle  # Ray's own copy: the one that pickles deployments

from rstitch_core import Generation, RoutingParams, SamplingParams
from services.app import AppConfig, bind_app
from services.protocol import collect_responses
from services.worker import LLMWorker

FIXED_RETRIES_S = sum(0.25 * 2 ** k for k in range(6))  # the old schedule: 15.75 s, then UNAVAILABLE
LOAD_DELAY_S = FIXED_RETRIES_S + 5  # the replacement's load alone outlasts that schedule
MARKER = os.path.join(tempfile.mkdtemp(prefix="rstitch-recovery-"), "first-llm-worker-loaded")
PROMPT = "the quick brown fox"


class SlowReplacementLLMWorker(LLMWorker):
    """The LLM worker; every instance after the first (a replacement) loads LOAD_DELAY_S slower."""

    def __init__(self, config):
        if os.path.exists(MARKER):
            time.sleep(LOAD_DELAY_S)
        else:
            open(MARKER, "w").close()
        super().__init__(config)


# Ray's workers cannot import this test module: send the class itself.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
APP_ARGS = {"llm_replicas": 1, "router": None}


def BUILD_APP(args: dict):  # noqa: N802 - the name conftest's service fixture looks for
    return bind_app(AppConfig.from_args(args), llm_class=SlowReplacementLLMWorker)


def test_streams_wait_for_a_slowly_loading_replacement_and_complete_identically(client, engine):
    kwargs = dict(sampling=SamplingParams(max_new_tokens=120), routing=RoutingParams(policy="llm"))
    want = Generation.collect(engine.generate(PROMPT, **kwargs)).to_dict()
    results, first_tokens = [None, None], [threading.Event(), threading.Event()]

    def stream(i):
        responses = []
        try:
            for response in client.generate(prompt=PROMPT, **kwargs):
                responses.append(response)
                first_tokens[i].set()
            results[i] = collect_responses(responses)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            results[i] = err
        finally:
            first_tokens[i].set()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert all(e.wait(120) for e in first_tokens)
    (worker,) = [p for p in psutil.Process().children(recursive=True) if "ServeReplica:rstitch:LLMWorker" in " ".join(p.cmdline())]
    killed_at = time.monotonic()
    worker.kill()  # kill -9, as an OOM killer or a crash would
    for t in threads:
        t.join(300)
    recovered_s = time.monotonic() - killed_at
    print(f"\nLLM worker killed; replacement loaded {LOAD_DELAY_S:.2f} s slower; streams done {recovered_s:.1f} s "
          f"after the kill: {[type(r).__name__ for r in results]}")
    for got in results:
        assert isinstance(got, dict), got
        assert got["token_ids"] == want["token_ids"] and got["stats"]["llm"]["rebuilds"] >= 1
    assert recovered_s > FIXED_RETRIES_S  # past the point where the fixed retries gave up

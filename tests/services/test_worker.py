"""A worker driven directly, without Ray or a front end: what it does when its call is cancelled."""

import asyncio

import pytest

from rstitch_core import RoutingParams, SamplingParams
from rstitch_core.events import ModelStats
from rstitch_core.policies.acceptance import Draft
from rstitch_core.policies.phases import VerifyOp
from rstitch_core.sequence import ModelState
from services.worker import LLMWorker, SessionReleased, TurnCall, WorkerConfig
from serving import HOLD_PROMPT, HOLD_TOKENS


def test_a_cancelled_call_frees_its_session_without_a_release_call(pair_dirs):
    worker = LLMWorker(WorkerConfig(str(pair_dirs[1]), dtype="float32", device="cpu"))
    sampling = SamplingParams(max_new_tokens=HOLD_TOKENS)
    prompt = worker.model.tokenizer(HOLD_PROMPT)["input_ids"]
    # An empty draft decoding alone while its entropy stays above 0: the call outlasts the test.
    call = TurnCall("s1", prompt, len(prompt), 0, sampling, RoutingParams(policy="llm"), worker.model.max_context,
                    frozenset(), op=VerifyOp(Draft(), decode_while_above=0.0))

    async def cancel_after_first_token():
        first = asyncio.Event()

        async def consume():
            async for item in worker.run(call):
                assert "token" in item, item  # still decoding when it is cancelled
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        assert "s1" in (await worker.state())["session_ids"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await worker.state()

    state = asyncio.run(cancel_after_first_token())
    assert state["sessions"] == 0 and state["cached_tokens"] == 0
    # The request is over: a call that was already on its way cannot bring the session back.
    with pytest.raises(SessionReleased):
        asyncio.run(anext(worker.run(call)))


def test_a_worker_loads_the_prefill_copy_its_config_names(pair_dirs):
    import torch

    worker = LLMWorker(WorkerConfig(str(pair_dirs[1]), dtype="bfloat16", prefill="float32:4", device="cpu"))
    base = worker.model
    assert base.dtype == torch.bfloat16 and base.prefill.dtype == torch.float32 and base.prefill.min_tokens == 4
    state, outs = ModelState("llm", worker.engine, ModelStats()), []

    def passes():  # a 6-token prompt goes to the copy, the next token to the bf16 model
        outs.append((yield from state.step([5, 6, 7, 8, 9, 10], turn_start=True)))
        outs.append((yield from state.step([5, 6, 7, 8, 9, 10, int(outs[0].logits[0].argmax())], turn_start=False)))

    try:  # through the worker's engine, batched
        worker.engine.submit(passes(), lambda _: None, lambda _: None).done.result(timeout=120)
        assert state.num_cached == 7 and outs[0].logits.dtype == outs[1].logits.dtype == torch.float32
    finally:
        state.release()
        worker.engine.close()
    with pytest.raises(ValueError, match="prefill dtype must be one of"):
        WorkerConfig(str(pair_dirs[1]), prefill="int8:4")


def test_the_phase_decodes_ahead_while_a_token_is_on_its_way(pair_dirs):
    """The next pass does not wait for the front end to take the previous token: with the consumer
    holding its first token, the worker's mirror of the sequence keeps growing."""
    worker = LLMWorker(WorkerConfig(str(pair_dirs[1]), dtype="float32", device="cpu"))
    prompt = worker.model.tokenizer(HOLD_PROMPT)["input_ids"]
    call = TurnCall("s2", prompt, len(prompt), 0, SamplingParams(max_new_tokens=8), RoutingParams(policy="llm"),
                    worker.model.max_context, frozenset(), op=VerifyOp(Draft(), decode_while_above=0.0))

    async def hold_the_first_token():
        stream = worker.run(call)
        first = await anext(stream)
        session = worker.store.sessions["s2"]

        async def decoded_ahead():
            while session.seq.num_generated < 8:  # decoded without anyone asking for the next token
                await asyncio.sleep(0.01)
        await asyncio.wait_for(decoded_ahead(), timeout=120)  # a bound for a hang, not an expected duration
        rest = [item async for item in stream]
        return first, rest

    first, rest = asyncio.run(hold_the_first_token())
    assert "token" in first and [("token" in r) for r in rest] == [True] * 7 + [False]
    assert rest[-1]["end"] and rest[-1]["result"].alone == 7
    worker.engine.close()

"""The runner: configurations interleaved per problem, one flushed record each, resume without duplicates."""

import json

import pytest

from rstitch_core import GenerationStats, Policy, SamplingParams
from rstitch_eval.prompts import gsm8k_messages
from rstitch_eval.runner import RESULTS_NAME, build_configs, check_settings, read_records, run_eval

SAMPLING = SamplingParams(max_new_tokens=8)


class FakeBackend:
    """Answers "The answer is <gold>" on even problem ids (by question text), else a wrong number;
    raises KeyboardInterrupt on the timed call number `interrupt_at`."""

    def __init__(self, problems, interrupt_at=None):
        self.gold = {gsm8k_messages(p.question)[0]["content"]: (p.id, p.gold) for p in problems}
        self.interrupt_at = interrupt_at
        self.calls = []

    def __call__(self, request, sampling, routing):
        messages = request["messages"]
        if sampling.max_new_tokens == SAMPLING.max_new_tokens:  # not a warm-up call
            if len(self.calls) == self.interrupt_at:
                raise KeyboardInterrupt
            self.calls.append(routing)
        pid, gold = self.gold[messages[0]["content"]]
        stats = GenerationStats(prompt_tokens=20, total_seconds=0.01)
        stats.slm.tokens, stats.llm.tokens = (6, 2) if routing.policy is Policy.RSTITCH else (8, 0)
        stats.switches_slm_to_llm = stats.switches_llm_to_slm = 1 if routing.policy is Policy.RSTITCH else 0
        text = f"Step one.\nThe answer is {gold if pid % 2 == 0 else 0}."
        return {"text": text, "stats": stats.to_dict(), "finish_reason": "eos"}


def configs():
    return build_configs(["llm", "rstitch", "speculative"], [0.02, 0.05], draft_tokens=4)


def test_config_labels():
    assert [c.label for c in configs()] == ["llm", "rstitch@0.02", "rstitch@0.05", "speculative"]
    assert [c.routing.threshold for c in configs()[1:3]] == [0.02, 0.05]
    with pytest.raises(ValueError, match="unknown policy 'fast'"):
        build_configs(["fast"], [], 4)
    with pytest.raises(ValueError, match="threshold"):
        build_configs(["rstitch"], [1.5], 4)
    with pytest.raises(ValueError, match="at least one threshold"):
        build_configs(["rstitch"], [], 4)


def test_records_interleave_configs_per_problem(gsm8k, tmp_path):
    problems = gsm8k[:3]
    records = run_eval(problems, configs(), FakeBackend(problems), tmp_path, SAMPLING, progress=False)
    assert [(r["problem_id"], r["config"]) for r in records] == [(p.id, c.label) for p in problems for c in configs()]
    first = records[0]
    assert first["gold"] == "18" and first["prediction"] == "18" and first["correct"] is True
    assert records[4]["correct"] is False and records[4]["prediction"] == "0"
    stitch = records[1]
    assert (stitch["llm_tokens"], stitch["slm_tokens"], stitch["switches"], stitch["threshold"]) == (2, 6, 2, 0.02)
    assert records[3]["draft_tokens"] == 4 and first["threshold"] is None
    assert all(r["latency_s"] > 0 for r in records)
    assert read_records(tmp_path / RESULTS_NAME) == records


def test_resume_after_an_interruption_runs_only_what_is_missing(gsm8k, tmp_path):
    problems = gsm8k[:3]
    full = run_eval(problems, configs(), FakeBackend(problems), tmp_path / "full", SAMPLING, progress=False)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_eval(problems, configs(), FakeBackend(problems, interrupt_at=5), out, SAMPLING, progress=False)
    assert len(read_records(out / RESULTS_NAME)) == 5  # every finished record was flushed
    with open(out / RESULTS_NAME, "a") as f:
        f.write('{"problem_id": 1, "config": "rstitch')  # a record cut short by a kill
    second = FakeBackend(problems)
    records = run_eval(problems, configs(), second, out, SAMPLING, progress=False)
    assert len(second.calls) == 12 - 5
    keys = [(r["problem_id"], r["config"]) for r in records]
    assert len(keys) == len(set(keys)) == 12
    assert keys == [(r["problem_id"], r["config"]) for r in full]
    def without_latency(rs):
        return [{k: v for k, v in r.items() if k != "latency_s"} for r in rs]

    assert without_latency(read_records(out / RESULTS_NAME)) == without_latency(full)
    again = FakeBackend(problems)
    assert len(run_eval(problems, configs(), again, out, SAMPLING, progress=False)) == 12 and again.calls == []


def test_settings_must_match_to_resume(tmp_path):
    settings = {"dataset": "gsm8k", "max_new_tokens": 512, "slm": "a", "llm": "b"}
    check_settings(tmp_path, settings)
    check_settings(tmp_path, dict(settings))
    assert json.loads((tmp_path / "run.json").read_text()) == settings
    with pytest.raises(ValueError, match="max_new_tokens=512, not 256; use another --out"):
        check_settings(tmp_path, {**settings, "max_new_tokens": 256})


def test_a_corrupt_middle_line_is_reported(tmp_path):
    (tmp_path / RESULTS_NAME).write_text('{"problem_id": 0}\nnot json\n{"problem_id": 1}\n')
    with pytest.raises(ValueError, match=f"{RESULTS_NAME}:2 is not a JSON record"):
        read_records(tmp_path / RESULTS_NAME)


def test_server_backend_returns_the_result_and_names_grpc_failures():
    import grpc

    from rstitch_core import RoutingParams
    from rstitch_eval.runner import BackendError, server_backend

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "failed to connect to all addresses"

    class FakeClient:
        address = "localhost:1"

        def __init__(self, result=None):
            self.result = result

        def generate_result(self, messages, sampling, routing):
            if self.result is None:
                raise Unavailable()
            return self.result

    request = {"messages": gsm8k_messages("What is 1 + 1?")}
    assert server_backend(FakeClient({"text": "2"}))(request, SAMPLING, RoutingParams()) == {"text": "2"}
    with pytest.raises(BackendError, match="localhost:1: UNAVAILABLE: failed to connect"):
        server_backend(FakeClient())(request, SAMPLING, RoutingParams())


def test_gsm_symbolic_problems_are_generated_reproducibly_with_parseable_answers():
    from rstitch_eval.tasks import get_task

    task = get_task("gsm-symbolic")
    first, again = task.load(0, 3), task.load(1, 2)
    assert [p.question for p in first[1:]] == [p.question for p in again]
    for p in first:
        assert p.gold.replace(".", "", 1).lstrip("-").isdigit()
        assert task.grade(f"Step.\nThe answer is {p.gold}.", p.gold) == (p.gold, True)
        assert "messages" in task.request(p)

"""Run every configuration on every problem, appending one JSON line per (problem, configuration).

Configurations run back to back on each problem before the next problem starts, so slow drift of a
shared machine hits all of them alike. Decoding is greedy. Each record is flushed as soon as it is
written; a rerun on the same file skips the (problem, configuration) pairs it already holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rstitch_core import Generation, Policy, RoutingParams, SamplingParams
from rstitch_core.config import NoRouter, parse_routing_spec
from rstitch_eval.gsm8k import Problem
from rstitch_eval.tasks import TASKS, Task

RESULTS_NAME = "results.jsonl"
SETTINGS_NAME = "run.json"

# request (prompt= or messages=), sampling, routing -> a dict shaped like Generation.to_dict()
Backend = Callable[[dict, SamplingParams, RoutingParams], dict]


class BackendError(RuntimeError):
    """The generation backend failed (e.g. the server went away); finished records are kept."""


@dataclass(frozen=True)
class EvalConfig:
    """One column of the evaluation: `llm`, `slm`, `speculative`, `rstitch@<tau>`, `rstitch+`,
    `verified@<tau>` or `verified@<tau>:relaxed=<ratio>`."""

    label: str
    routing: RoutingParams


def build_configs(policies: Sequence[str], thresholds: Sequence[float], draft_tokens: int | None,
                  router_tau: float | None = None) -> list[EvalConfig]:
    """Configurations in the order given; `rstitch` and `verified` expand to one per threshold
    (`verified:relaxed=R` runs the relaxed acceptance rule at ratio R), `rstitch+` runs at its
    router's tau (ValueError if bad)."""
    configs: dict[str, EvalConfig] = {}
    for spec in policies:
        policy = parse_routing_spec(spec).policy
        if policy is Policy.VERIFIED:
            if not thresholds:
                raise ValueError("the verified policy needs at least one threshold (--thresholds)")
            for tau in thresholds:
                routing = parse_routing_spec(spec, tau, draft_tokens)
                label = f"verified@{tau:g}" + spec[len(spec.split(":")[0]):]
                configs.setdefault(label, EvalConfig(label, routing))
            continue
        if ":" in spec:
            raise ValueError(f"{spec!r}: only verified takes options (relaxed=R, k=N)")
        if policy is Policy.RSTITCH_PLUS:
            try:
                routing = RoutingParams.resolve(router_tau, policy=policy)
            except NoRouter:
                raise ValueError("the rstitch+ policy needs a router (--router PATH)") from None
            configs.setdefault("rstitch+", EvalConfig("rstitch+", routing))
        elif policy is Policy.RSTITCH:
            if not thresholds:
                raise ValueError("the rstitch policy needs at least one threshold (--thresholds)")
            for tau in thresholds:
                routing = RoutingParams(policy=policy, threshold=tau, draft_tokens=draft_tokens)
                configs.setdefault(f"rstitch@{tau:g}", EvalConfig(f"rstitch@{tau:g}", routing))
        else:
            configs.setdefault(policy.value, EvalConfig(policy.value, RoutingParams(policy=policy,
                                                                                   draft_tokens=draft_tokens)))
    if not configs:
        raise ValueError("no policies given; accepted: llm, slm, speculative, rstitch, rstitch+, verified")
    return list(configs.values())


def engine_backend(engine, router=None) -> Backend:
    def generate(request, sampling, routing):
        chosen = router if routing.policy is Policy.RSTITCH_PLUS else None
        return Generation.collect(engine.generate(**request, sampling=sampling, routing=routing,
                                                  router=chosen)).to_dict()
    return generate


def server_backend(client) -> Backend:
    import grpc

    def generate(request, sampling, routing):
        try:
            return client.generate_result(**request, sampling=sampling, routing=routing)
        except grpc.RpcError as err:
            raise BackendError(f"{client.address}: {err.code().name}: {err.details()}") from None
    return generate


def read_records(path: Path) -> list[dict]:
    """The records in a results file; a last line cut short by an interruption is dropped from the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[:data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    records = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n} is not a JSON record ({err}); move the file away to start afresh") from None
    return records


def check_settings(out_dir: Path, settings: dict) -> None:
    """Record the run's settings in run.json, or refuse to mix results made with other settings."""
    path = out_dir / SETTINGS_NAME
    if path.is_file():
        old = json.loads(path.read_text())
        for key, value in settings.items():
            if old.get(key) != value:
                raise ValueError(f"{out_dir} holds results made with {key}={old.get(key)!r}, not {value!r}; "
                                 "use another --out directory or the same settings")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def run_eval(problems: Sequence[Problem], configs: Sequence[EvalConfig], backend: Backend, out_dir: Path,
             sampling: SamplingParams, task: Task = TASKS["gsm8k"], progress: bool = True,
             after_problem: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Run what is missing from `out_dir/results.jsonl`; return all its records (old and new)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_NAME
    records = read_records(path)
    done = {(r["problem_id"], r["config"]) for r in records}
    todo = [(p, c) for p in problems for c in configs if (p.id, c.label) not in done]
    if not todo:
        return records
    warm_up(backend, task, problems[0], configs)
    bar = tqdm(total=len(problems) * len(configs), initial=len(problems) * len(configs) - len(todo),
               desc="eval", unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    with open(path, "a", encoding="utf-8") as out, bar:
        for i, (problem, config) in enumerate(todo):
            bar.set_postfix_str(f"problem {problem.id} {config.label} ...", refresh=True)
            record = run_one(task, problem, config, backend, sampling)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            records.append(record)
            verdict = "right" if record["correct"] else "wrong"
            bar.set_postfix_str(f"problem {problem.id} {config.label} {verdict} | "
                                f"{running_accuracy(records, config.label)}", refresh=False)
            bar.update()
            last_of_problem = i + 1 == len(todo) or todo[i + 1][0].id != problem.id
            if after_problem is not None and last_of_problem:
                after_problem(records)
    return records


def run_one(task: Task, problem: Problem, config: EvalConfig, backend: Backend, sampling: SamplingParams) -> dict:
    start = time.perf_counter()
    result = backend(task.request(problem), sampling, config.routing)
    latency = time.perf_counter() - start
    stats = result["stats"]
    prediction, correct = task.grade(result["text"], problem.gold)
    policy = config.routing.policy
    return {
        "problem_id": problem.id, "config": config.label, "policy": policy.value,
        "threshold": config.routing.threshold if policy.stitches or policy is Policy.VERIFIED else None,
        "draft_tokens": (config.routing.draft_limit if policy in (Policy.SPECULATIVE, Policy.VERIFIED)
                         else None),
        "acceptance": config.routing.acceptance.value if policy is Policy.VERIFIED else None,
        "gold": problem.gold, "prediction": prediction, "correct": correct,
        "latency_s": latency, "engine_s": stats["total_seconds"], "ttft_s": stats["time_to_first_token"],
        "prompt_tokens": stats["prompt_tokens"], "generated_tokens": stats["generated_tokens"],
        "slm_tokens": stats["slm"]["tokens"], "llm_tokens": stats["llm"]["tokens"],
        "llm_token_share": stats["llm_token_share"],
        "switches": stats["switches_slm_to_llm"] + stats["switches_llm_to_slm"],
        "switches_slm_to_llm": stats["switches_slm_to_llm"], "switches_llm_to_slm": stats["switches_llm_to_slm"],
        "discarded_tokens": stats["discarded_tokens"], "drafted_tokens": stats["drafted_tokens"],
        "accepted_tokens": stats["accepted_tokens"], "finish_reason": result["finish_reason"],
        "text": result["text"],
    }


def warm_up(backend: Backend, task: Task, problem: Problem, configs: Sequence[EvalConfig]) -> None:
    """One short untimed generation per policy, so one-time start-up costs stay out of the first latency."""
    seen = set()
    for config in configs:
        if config.routing.policy not in seen:
            seen.add(config.routing.policy)
            backend(task.request(problem), SamplingParams(max_new_tokens=4), config.routing)


def running_accuracy(records: list[dict], label: str) -> str:
    rs = [r for r in records if r["config"] == label]
    right = sum(r["correct"] for r in rs)
    return f"acc {label} {right / len(rs):.0%} ({right}/{len(rs)})"

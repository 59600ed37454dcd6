"""One call from problems to a saved router: labels, supervised warm start, RL, report."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rstitch_core.drafting.profile import CostProfile
from rstitch_core.router import LearnedRouter, RouterConfig, slm_fingerprint
from rstitch_train.labels import collect_labels
from rstitch_train.router import RLConfig, SupervisedConfig, train_rl, train_supervised


def new_router(engine, slm_name: str, tau: float, width: int, seed: int) -> LearnedRouter:
    torch.manual_seed(seed)
    config = RouterConfig(slm_name=slm_name, slm_fingerprint=slm_fingerprint(engine.slm),
                          hidden_size=engine.slm.hidden_size, tau=tau, max_context=engine.max_context, width=width)
    return LearnedRouter(config)


def train_router(engine, task, problems: list, slm_name: str, tau: float, out: Path, cost: CostProfile,
                 supervised_problems: int, supervised: SupervisedConfig, rl: RLConfig, width: int = 64,
                 progress: bool = True) -> dict:
    """Train a router for `engine`'s SLM on `problems` of `task` and save it to `out` (plus a
    report next to it, `<out>.json`). Supervised labels come from the first
    `supervised_problems` problems; RL samples from all of them."""
    random.seed(rl.seed)
    router = new_router(engine, slm_name, tau, width, rl.seed)
    prompts = [engine.encode(**task.request(p)) for p in problems]
    report: dict = {"task": task.name, "tau": tau, "problems": [p.id for p in problems],
                    "supervised_config": asdict(supervised), "rl_config": asdict(rl)}
    start = time.perf_counter()
    if supervised_problems > 0:
        data = collect_labels(engine, prompts[:supervised_problems], router, rl.max_new_tokens, progress)
        report["supervised"] = train_supervised(router, data, supervised, progress)
    if rl.steps > 0:
        pairs = [(ids, p.gold) for ids, p in zip(prompts, problems)]
        report["rl"] = train_rl(engine, router, pairs, lambda text, gold: task.grade(text, gold)[1], cost, rl,
                                progress)
    report["seconds"] = round(time.perf_counter() - start, 1)
    router.save(out)
    Path(f"{out}.json").write_text(json.dumps(report, indent=1) + "\n")
    return report

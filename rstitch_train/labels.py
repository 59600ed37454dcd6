"""Supervised labels for the router's warm start, from SLM trajectories and one LLM pass each.

At every position where the SLM's entropy exceeds tau, the label says whether the LLM, fed the same
prefix, would pick a different token (1: hand over) or the same one (0: keep). One teacher-forced
LLM pass over the whole trajectory gives every position's answer at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from rstitch_core import Policy, RoutingParams, SamplingParams
from rstitch_core.router import LearnedRouter
from rstitch_core.router.switch import RouterInput


@dataclass
class Decisions:
    """Router inputs at uncertain SLM positions, as network tensors."""

    hidden: torch.Tensor  # [N, D] float32
    scalars: torch.Tensor  # [N, S] float32
    labels: torch.Tensor  # [N] float32: 1 = the LLM would choose differently

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Recorder:
    """A SwitchRouter that always keeps the SLM's token and records what it was shown."""

    def __init__(self):
        self.inputs: list[RouterInput] = []

    def __call__(self, x: RouterInput) -> bool:
        self.inputs.append(x)
        return False


@torch.inference_mode()
def collect_labels(engine, prompts: list[list[int]], router: LearnedRouter, max_new_tokens: int,
                   progress: bool = True) -> Decisions:
    """Run the SLM greedily on each prompt and label its uncertain positions with the LLM."""
    routing = RoutingParams(policy=Policy.RSTITCH_PLUS, threshold=router.config.tau)
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    hidden, scalars, labels = [], [], []
    for ids in tqdm(prompts, desc="labels", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        recorder = Recorder()
        g, _ = engine.rollout(ids, sampling, routing, recorder)  # with "keep" always: SLM-only
        if not recorder.inputs:
            continue
        llm = engine.llm
        out = llm.forward(llm.new_cache(), ids + g.token_ids[:-1], num_logits=len(g.token_ids))
        llm_choice = out.logits.argmax(-1).tolist()  # llm_choice[k]: LLM's token for generated index k
        for x in recorder.inputs:
            k = x.num_generated
            h, s = router.inputs(x)
            hidden.append(h.cpu())
            scalars.append(s.cpu())
            labels.append(float(llm_choice[k] != g.token_ids[k]))
    if not labels:
        raise ValueError(f"no SLM position had entropy above tau={router.config.tau} on {len(prompts)} prompts; "
                         "lower tau or use more problems")
    return Decisions(torch.stack(hidden), torch.stack(scalars), torch.tensor(labels))

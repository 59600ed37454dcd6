"""The request's logits controls (penalties, logit_bias, min_tokens) and token log-probabilities.

Every distribution a token is drawn or verified from goes through `apply_controls` first: the SLM's
drafts, the LLM's verification rows and its own steps alike. That keeps the exact acceptance rule
exact with controls set: the LLM's verdict on a draft is taken on the same processed distribution
the LLM alone would have sampled from, so `verified` still equals `llm` token for token.

The penalties follow vLLM's definitions: presence and frequency count the generated tokens only,
the repetition penalty covers prompt and generated tokens (a positive logit is divided by it, a
negative one multiplied). min_tokens masks the end-of-sequence ids until that many tokens exist.
"""

from __future__ import annotations

from typing import Collection, Generator, Sequence

import torch

from rstitch_core.config import SamplingParams
from rstitch_core.models.backend import CacheSource, ForwardOutput, ModelBackend, PassRequest
from rstitch_core.models.step_engine import run_inline

TopLogprobs = tuple[tuple[int, float], ...]  # (token id, log-probability), most likely first


def apply_controls(params: SamplingParams, logits: torch.Tensor, history: Sequence[int], prompt_len: int,
                   eos_token_ids: Collection[int]) -> torch.Tensor:
    """logits: [N, V] raw, the next-token logits of the last N positions of `history` (row i follows
    history[:len(history) - N + 1 + i]) -> [N, V] float32 with the request's controls applied.
    Without controls the logits are returned as they are."""
    if not params.controls_logits:
        return logits
    n, width = logits.shape
    out = logits.float().clone()
    base = len(history) - n + 1  # tokens before row 0's prediction
    if params.logit_bias:
        ids = torch.tensor([t for t, _ in params.logit_bias if t < width], dtype=torch.long, device=out.device)
        bias = torch.tensor([b for t, b in params.logit_bias if t < width], device=out.device)
        out[:, ids] += bias
    eos = torch.tensor([t for t in eos_token_ids if t < width], dtype=torch.long, device=out.device)
    penalised = params.presence_penalty != 0 or params.frequency_penalty != 0 or params.repetition_penalty != 1
    counts = _counts(history[prompt_len:base], width) if penalised else None  # [V] generated so far
    seen = _counts(history[:base], width) > 0 if params.repetition_penalty != 1 else None  # [V]
    for i in range(n):
        if i > 0 and penalised:
            token = history[base + i - 1]  # the token row i - 1 predicted now precedes row i
            if token < width:
                counts[token] += int(base + i - 1 >= prompt_len)
                if seen is not None:
                    seen[token] = True
        row = out[i]
        if base + i - prompt_len < params.min_tokens and len(eos):
            row[eos] = float("-inf")
        if seen is not None:
            p = params.repetition_penalty
            row[seen] = torch.where(row[seen] > 0, row[seen] / p, row[seen] * p)
        if counts is not None:
            row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    return out


def _counts(tokens: Sequence[int], width: int) -> torch.Tensor:
    ids = torch.tensor([t for t in tokens if t < width], dtype=torch.long)
    return torch.bincount(ids, minlength=width).float()[:width]


def token_logprob(logits: torch.Tensor, token: int, top: int) -> tuple[float, TopLogprobs]:
    """logits: [V] (after the controls) -> the log-probability of `token` and the `top` most likely
    tokens with theirs. It is the model's distribution before temperature and top-k/top-p/min_p,
    as vLLM reports it: those only shape how the next token is drawn."""
    logp = torch.log_softmax(logits.float(), -1)  # [V]
    chosen = float(logp[token]) if token < logp.shape[-1] else float("-inf")
    if top == 0:
        return chosen, ()
    values, ids = torch.topk(logp, min(top, logp.shape[-1]))
    return chosen, tuple(zip(ids.tolist(), values.tolist()))


def prompt_logprobs_phase(caches: CacheSource, prompt_ids: Sequence[int], top: int
                          ) -> Generator[PassRequest, ForwardOutput, list[tuple[float, TopLogprobs] | None]]:
    """Per prompt token its log-probability given the tokens before it (and the `top` alternatives);
    None for the first, which has no context (as OpenAI and vLLM answer). One pass over the whole
    prompt on a cache of its own (from `caches`), released however the pass ends; yielded like a
    phase's passes, so a worker's engine schedules it with its sessions' passes."""
    cache = caches.new_cache()
    try:
        logits = (yield PassRequest(cache, list(prompt_ids), len(prompt_ids))).logits  # [P, V]
    finally:
        caches.release(cache)
    return [None] + [token_logprob(logits[j - 1], prompt_ids[j], top) for j in range(1, len(prompt_ids))]


def prompt_logprobs(runner: ModelBackend, prompt_ids: Sequence[int], top: int) -> list[tuple[float, TopLogprobs] | None]:
    """prompt_logprobs_phase with its pass run on `runner` at once (in-process)."""
    steps = run_inline(prompt_logprobs_phase(runner, prompt_ids, top), runner)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value

"""Token selection: greedy, temperature, top-k, top-p, with a per-request seeded generator."""

from __future__ import annotations

import secrets

import torch

from rstitch_core.config import SamplingParams
from rstitch_core.logits_processors import TopLogprobs, apply_controls, token_logprob


class Sampler:
    """Turns raw logits into tokens for one request.

    The same processed distribution (temperature -> top-k -> top-p, the order transformers uses) is
    what sampling draws from and what speculative rejection sampling compares, so speculative output
    follows exactly the LLM's sampling distribution.

    Randomness comes from one CPU generator per request, used through scalar uniforms only (draws
    are inverse-CDF), so the same seed gives the same tokens whatever device each model is on, and
    the generator state can travel between the SLM and LLM workers with the request.
    """

    def __init__(self, params: SamplingParams):
        self.params = params
        # Unseeded: a fresh OS-random seed. torch.seed() would do too, but it reseeds the whole
        # process's global generator, which is not this request's to touch.
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.params.greedy

    def get_state(self) -> torch.Tensor:
        """The generator state (a CPU uint8 tensor), to hand the request to another worker."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def adjust(self, logits: torch.Tensor, history, prompt_len: int, eos_token_ids) -> torch.Tensor:
        """logits: [N, V] raw at the last N positions of `history` -> [N, V] with the request's
        logits controls applied (rstitch_core/logits_processors.py); every sampled or verified
        distribution goes through here first."""
        return apply_controls(self.params, logits, history, prompt_len, eos_token_ids)

    def logprob(self, logits: torch.Tensor, token: int) -> tuple[float | None, TopLogprobs | None]:
        """logits: [V] adjusted -> (log-probability of `token`, top alternatives), or (None, None)
        when the request asks for no logprobs."""
        if self.params.logprobs is None:
            return None, None
        return token_logprob(logits, token, self.params.logprobs)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [N, V] adjusted -> [N, V] float32 sampling distribution (one-hot argmax when greedy)."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        logits = logits / self.params.temperature
        if self.params.min_p > 0:
            # min_p (vLLM's order: after temperature, before top-k/top-p): drop tokens under
            # min_p x the most likely token's probability.
            p = logits.softmax(-1)
            logits = logits.masked_fill(p < self.params.min_p * p.max(-1, keepdim=True).values, float("-inf"))
        k = self.params.top_k
        if 0 < k < logits.shape[-1]:
            kth = torch.topk(logits, k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.params.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(-1)
            # Drop a token once the mass strictly before it already reaches top_p; the first token
            # always survives.
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= self.params.top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        return logits.softmax(-1)

    def uniform(self) -> float:
        """One U(0, 1) draw from this request's generator."""
        return float(torch.rand((), generator=self.generator).item())

    def draw(self, probs: torch.Tensor) -> int:
        """probs: [V] (need not sum to 1) -> one token id by inverse CDF."""
        cdf = probs.float().cumsum(-1)
        target = torch.tensor(self.uniform(), device=cdf.device) * cdf[-1]
        # right=True skips zero-probability ids (their cdf equals their predecessor's).
        return min(int(torch.searchsorted(cdf, target, right=True).item()), probs.shape[-1] - 1)

    def sample(self, logits: torch.Tensor) -> int:
        """logits: [V] raw -> the chosen token id."""
        if self.greedy:
            return int(logits.argmax().item())
        return self.draw(self.probs(logits[None])[0])

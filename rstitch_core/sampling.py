"""Token selection: greedy, temperature, top-k, top-p, with a per-request seeded generator."""

from __future__ import annotations

import torch

from rstitch_core.config import SamplingParams


class Sampler:
    """Turns raw logits into tokens for one request.

    The same processed distribution (temperature -> top-k -> top-p, the order transformers uses) is
    what sampling draws from and what speculative rejection sampling compares, so speculative output
    follows exactly the LLM's sampling distribution.
    """

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu"):
        self.params = params
        self.seed = params.seed if params.seed is not None else int(torch.seed() % 2**63)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.params.greedy

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [N, V] raw -> [N, V] float32 sampling distribution (one-hot argmax when greedy)."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        logits = logits / self.params.temperature
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

    def draw(self, probs: torch.Tensor) -> int:
        """probs: [V] -> one token id drawn with this request's generator."""
        return int(torch.multinomial(probs, 1, generator=self.generator).item())

    def sample(self, logits: torch.Tensor) -> int:
        """logits: [V] raw -> the chosen token id."""
        if self.greedy:
            return int(logits.argmax().item())
        return self.draw(self.probs(logits[None])[0])

    def uniform(self) -> float:
        """One U(0, 1) draw from this request's generator (speculative acceptance test)."""
        return float(torch.rand((), generator=self.generator, device=self.generator.device).item())

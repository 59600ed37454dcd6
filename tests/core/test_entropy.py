import math

import torch

from rstitch_core import normalized_entropy


def test_uniform_is_one_and_one_hot_is_zero():
    assert torch.isclose(normalized_entropy(torch.zeros(1000)), torch.tensor(1.0))
    one_hot = torch.full((50,), float("-inf"))
    one_hot[3] = 2.0
    h = normalized_entropy(one_hot)
    assert h.item() == 0.0 and not torch.isnan(h)


def test_matches_float64_reference_and_handles_masked_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=gen) * 3
    logits[:, :100] = float("-inf")  # masked entries contribute nothing
    p = torch.softmax(logits.double(), -1)
    ref = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1) / math.log(300)
    h = normalized_entropy(logits)
    assert h.dtype == torch.float32 and h.shape == (4,)
    assert torch.allclose(h.double(), ref, atol=1e-6)


def test_low_precision_input_is_computed_in_float32():
    logits = torch.randn(8, 128).to(torch.bfloat16)
    h = normalized_entropy(logits)
    assert h.dtype == torch.float32
    assert torch.allclose(h, normalized_entropy(logits.float()))
    assert ((h >= 0) & (h <= 1)).all()

"""Random-weight models with the shapes of real ones, so a machine can be profiled without weights.

A pass's time depends on the model's shapes, the dtype and the device, not on the weights' values,
so `rstitch profile --shapes qwen2.5-1.5b,qwen2.5-7b` times a GPU that has never seen our weights.
The configurations are the published ones (config.json of the Qwen2.5 base and Coder models of each
size share these shapes); nothing is ever downloaded.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.initialization import no_init_weights

from rstitch_core.models.loading import parse_device, parse_dtype
from rstitch_core.models.runner import ModelRunner

_QWEN25 = dict(vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
               hidden_act="silu", bos_token_id=151643, eos_token_id=151643)
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(_QWEN25, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(_QWEN25, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       tie_word_embeddings=False),
}


def shape_config(name: str):
    """The transformers config of a built-in shape (ValueError naming the known ones otherwise)."""
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; built in: {', '.join(SHAPES)}")
    config = Qwen2Config(**SHAPES[name])
    config._attn_implementation = "sdpa"  # what real loads pick on CPU and CUDA alike
    return config


def build_shape(name: str, dtype: str | torch.dtype = "bfloat16", device: str | torch.device = "cpu",
                seed: int = 0) -> ModelRunner:
    """A runner over a random-weight model of shape `name`, built directly on `device`.

    The usual initializers are skipped (they take most of a minute for 1.5B parameters on two
    cores); every weight is instead a tiling of one small random block, small enough that no
    activation under- or overflows.
    """
    config, torch_dtype, dev = shape_config(name), parse_dtype(dtype), parse_device(device)
    with no_init_weights(), torch.device(dev):
        model = Qwen2ForCausalLM._from_config(config, dtype=torch_dtype)
    block = torch.empty(65537, device=dev).uniform_(-0.05, 0.05, generator=_generator(seed, dev)).to(torch_dtype)
    with torch.no_grad():
        for param in model.parameters():
            _tile(param.view(-1), block)
    tokenizer = SimpleNamespace(eos_token_id=config.eos_token_id)  # a model of a shape has no vocabulary text
    return ModelRunner(model.eval(), tokenizer, name=name)


def _tile(flat: torch.Tensor, block: torch.Tensor) -> None:
    whole = flat.numel() // block.numel() * block.numel()
    flat[:whole].view(-1, block.numel()).copy_(block.expand(whole // block.numel(), -1))
    flat[whole:].copy_(block[:flat.numel() - whole])


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen

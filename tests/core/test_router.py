"""The R-Stitch+ router: decisions, its file, the SLM check, and its place in the decoding loop."""

from __future__ import annotations

import pytest
import torch

from rstitch_core import Engine, Generation, RoutingParams, SamplingParams
from rstitch_core.router import LearnedRouter, RouterConfig, RouterError
from rstitch_core.router.switch import RouterInput
from tiny_models import make_router

PROMPT = "Natalia sold clips"
N = 40


def run(engine, policy, tau=0.5, router=None):
    return Generation.collect(engine.generate(PROMPT, sampling=SamplingParams(max_new_tokens=N),
                                              routing=RoutingParams(policy, tau), router=router))


def test_always_keep_equals_slm_only_and_always_hand_over_equals_rstitch(engine):
    keep = run(engine, "rstitch+", router=make_router(engine.slm, always=False))
    assert keep.token_ids == run(engine, "slm").token_ids and keep.stats.llm.tokens == 0
    hand = run(engine, "rstitch+", router=make_router(engine.slm, always=True))
    ref = run(engine, "rstitch")
    assert (hand.token_ids, hand.sources) == (ref.token_ids, ref.sources)
    assert hand.stats.switches_slm_to_llm > 0


def test_a_random_router_decides_between_the_two(engine):
    router = make_router(engine.slm, seed=3)
    g = run(engine, "rstitch+", router=router)
    ref = run(engine, "rstitch")
    assert 0 < g.stats.switches_slm_to_llm <= ref.stats.switches_slm_to_llm


def test_saved_router_reloads_with_identical_decisions(engine, tmp_path):
    router = make_router(engine.slm, seed=5)
    path = tmp_path / "r.safetensors"
    router.save(path)
    again = LearnedRouter.load(path, slm=engine.slm)
    assert again.config == router.config
    gen = torch.Generator().manual_seed(0)
    for i in range(20):
        x = RouterInput(torch.randn(engine.slm.hidden_size, generator=gen), 10 + i, i, 0.5 + i / 50, i % 5)
        assert again.probability(x) == router.probability(x)
        assert again(x) == router(x)
    assert run(engine, "rstitch+", router=again).token_ids == run(engine, "rstitch+", router=router).token_ids


def test_router_for_another_slm_is_rejected(engine, tmp_path):
    path = tmp_path / "r.safetensors"
    make_router(engine.slm).save(path)
    with pytest.raises(RouterError, match="trained for SLM 'tiny-slm'.*but the SLM loaded is 'llm'"):
        LearnedRouter.load(path, slm=engine.llm)  # another model (same tokenizer, other weights)


def test_fingerprint_ignores_the_dtype(engine, pair_dirs, tmp_path):
    path = tmp_path / "r.safetensors"
    make_router(engine.slm).save(path)
    bf16 = Engine.load(str(pair_dirs[0]), str(pair_dirs[1]), dtype="bfloat16")
    LearnedRouter.load(path, slm=bf16.slm)  # no error


def test_unreadable_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(RouterError, match="does not exist"):
        LearnedRouter.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(RouterError, match="not a router file"):
        LearnedRouter.load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(RouterError, match="format 'pt'"):
        LearnedRouter.load(other)


@pytest.mark.parametrize("field, value, message", [
    ("tau", 1.5, "router tau must be in"), ("width", 0, "width must be an integer"),
    ("features", ("entropy", "mood"), "unknown router features"),
])
def test_config_is_validated(field, value, message):
    kwargs = dict(slm_name="s", slm_fingerprint="f", hidden_size=8, tau=0.1, max_context=64)
    with pytest.raises(RouterError, match=message):
        RouterConfig(**{**kwargs, field: value})


def test_wrong_hidden_size_is_an_error(engine):
    router = make_router(engine.slm)
    with pytest.raises(RouterError, match="hidden states of size"):
        router.probability(RouterInput(torch.zeros(3), 1, 0, 0.9, 0))


def test_rollout_reports_every_forward_pass(engine):
    ids = engine.encode(PROMPT)
    g, passes = engine.rollout(ids, SamplingParams(max_new_tokens=N), RoutingParams("rstitch", 0.5))
    for model in ("slm", "llm"):
        stats = getattr(g.stats, model)
        assert len(passes[model]) == stats.forward_passes
        assert sum(n for n, _ in passes[model]) == stats.forward_tokens
        kv = 0
        for n, cached in passes[model]:  # each pass starts where the cache ended (no rollback in R-Stitch)
            assert cached == kv
            kv += n


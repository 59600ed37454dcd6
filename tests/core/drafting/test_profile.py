"""Cost profiles: the pass-cost fit recovers known costs, profiles save/load under their key, a real
runner is measured (single and batched passes), shapes build, and the dtype choice follows the costs."""

import random

import pytest
import torch

from rstitch_core.drafting.cost import PassCost, fit_pass_cost
from rstitch_core.drafting.profile import (
    CostProfile,
    ProfileKey,
    cached_profile,
    choose_dtype,
    default_path,
    profile_key,
)
from rstitch_core.drafting.profiling import CPU_GRID, GPU_GRID, Grid, profile_pair

KEY = ProfileKey("qwen2-small", "qwen2-large", "bfloat16", "cpu", "Test CPU", 2)
SMALL_GRID = Grid(contexts=(16, 64), sizes=(1, 2, 4), prefills=(8,), batch_rows=(3,), batch_sizes=(1, 2),
                  min_seconds=0.0, max_reps=1)


def grid_points(grid: Grid):
    """(n, kv, b, logits) of every pass a grid times, in the order measure() times them."""
    pts = [(n, kv, 1, n) for n in grid.sizes for kv in grid.contexts]
    pts += [(n, 0, 1, 1) for n in grid.prefills]
    return pts + [(n, grid.contexts[0], b, n) for b in grid.batch_rows for n in grid.batch_sizes]


def synthetic(truth: PassCost, grid: Grid, noise: float = 0.0, seed: int = 0):
    rng = random.Random(seed)
    return [(n, kv, b, lg, truth.seconds(n, kv, b, lg) * rng.uniform(1 - noise, 1 + noise))
            for n, kv, b, lg in grid_points(grid)]


@pytest.mark.parametrize("truth, grid", [
    (PassCost((0.02, 0.03, 0.0, 0.004, 2e-7, 1e-6)), CPU_GRID),  # compute-bound CPU: a token costs ~1.5 steps
    (PassCost((0.025, 1e-5, 4e-4, 2e-6, 1e-9, 3e-7), knee=256), GPU_GRID),  # flat, then compute-bound
])
def test_fit_recovers_known_costs_on_the_grids_it_is_used_with(truth, grid):
    got = fit_pass_cost(synthetic(truth, grid))
    for n, kv, b, lg in [(1, 300, 1, 1), (9, 300, 1, 9), (1, 1000, 8, 1), (5, 100, 16, 5), (200, 0, 1, 1)]:
        assert got.seconds(n, kv, b, lg) == pytest.approx(truth.seconds(n, kv, b, lg), rel=0.02)
    assert min(got.coef) >= 0


def test_fit_is_robust_to_noise_and_refuses_bad_input():
    truth = PassCost((0.3, 0.14, 0.0, 0.02, 1e-6, 2e-6))
    got = fit_pass_cost(synthetic(truth, CPU_GRID, noise=0.05, seed=1))
    assert min(got.coef) >= 0
    for n, kv, b, lg in [(1, 256, 1, 1), (9, 256, 1, 9), (1, 32, 4, 1)]:
        assert got.seconds(n, kv, b, lg) == pytest.approx(truth.seconds(n, kv, b, lg), rel=0.1)
    with pytest.raises(ValueError, match="need >= 7 timed passes"):
        fit_pass_cost(synthetic(truth, CPU_GRID)[:6])
    with pytest.raises(ValueError, match="must be positive"):
        fit_pass_cost([(1, 0, 1, 1, 0.0)] + synthetic(truth, CPU_GRID))


def test_save_load_round_trip_and_key_checks(tmp_path):
    profile = CostProfile(KEY, PassCost((0.01, 0.002, 0, 0, 0, 0)), PassCost((0.03, 0.01, 0, 0.001, 0, 0), 16.0),
                          points={"slm": [[1, 0, 1, 1, 0.012]]})
    path = profile.save(tmp_path / "p.json")
    assert CostProfile.load(path) == profile
    assert CostProfile.load(path, expect=KEY) == profile
    other = ProfileKey("qwen2-small", "qwen2-large", "float32", "cpu", "Other CPU", 2)
    with pytest.raises(ValueError, match=r"another setup: dtype: 'bfloat16' != 'float32'; hardware"):
        CostProfile.load(path, expect=other)
    (tmp_path / "bad.json").write_text('{"format": "rstitch-cost-profile/1", "key": {}}')
    with pytest.raises(ValueError, match="not a cost profile"):
        CostProfile.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="hardware must be a non-empty string"):
        ProfileKey("a", "b", "float32", "cpu", "")


def test_the_default_cache_answers_only_for_its_key(tmp_path):
    profile = CostProfile(KEY, PassCost((0.01, 0, 0, 0, 0, 0)), PassCost((0.03, 0, 0, 0, 0, 0)))
    assert cached_profile(KEY, tmp_path) is None
    profile.save(default_path(KEY, tmp_path))
    assert cached_profile(KEY, tmp_path) == profile
    for field, value in (("dtype", "float32"), ("hardware", "Other CPU"), ("threads", 16), ("llm", "qwen2-7b")):
        other = ProfileKey(**{**vars(KEY), field: value})
        assert default_path(other, tmp_path) != default_path(KEY, tmp_path)
        assert cached_profile(other, tmp_path) is None


def test_a_fabricated_cache_stands_for_kv_cached_positions(engine):
    cache = engine.llm.filled_cache(40)
    out = engine.llm.forward(cache, [1, 2, 3], num_logits=3)
    assert out.logits.shape == (3, engine.llm.vocab_size) and torch.isfinite(out.logits).all()
    assert cache.num_tokens == 43 and cache.kv.get_seq_length() == 43


def test_profile_pair_measures_single_and_batched_passes(engine):
    profile = profile_pair(engine.slm, engine.llm, SMALL_GRID)
    assert profile.key == profile_key(engine.slm.model.config, engine.llm.model.config, "float32", "cpu")
    assert profile.key.slm.startswith("qwen2-l2-h64") and profile.key.llm.startswith("qwen2-l3-h64")
    assert profile.batched
    for name in ("slm", "llm"):
        timed = [tuple(p[:4]) for p in profile.points[name]]
        assert timed == grid_points(SMALL_GRID) and all(p[4] > 0 for p in profile.points[name])
        assert profile.model(name).decode_seconds(64) > 0


def test_a_shape_builds_random_weights_that_run(monkeypatch):
    from rstitch_core import shapes

    monkeypatch.setitem(shapes.SHAPES, "tiny", dict(shapes.SHAPES["qwen2.5-0.5b"], hidden_size=64, intermediate_size=96,
                                                    num_hidden_layers=2, num_attention_heads=4, vocab_size=1000,
                                                    bos_token_id=0, eos_token_id=0))
    runner = shapes.build_shape("tiny", "bfloat16", "cpu")
    params = torch.cat([p.detach().float().flatten() for p in runner.model.parameters()])
    assert runner.dtype == torch.bfloat16 and params.abs().max() <= 0.0502 and params.std() > 0.01
    out = runner.forward(runner.new_cache(), [1, 2, 3])
    assert torch.isfinite(out.logits).all() and runner.eos_token_ids == {0}
    with pytest.raises(ValueError, match="unknown model shape 'qwen9'; built in: qwen2.5-0.5b"):
        shapes.build_shape("qwen9")


@pytest.mark.parametrize("name, params", [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-1.5b", 1_543_714_304),
                                          ("qwen2.5-7b", 7_615_616_512)])
def test_built_in_shapes_have_the_published_parameter_counts(name, params):
    from transformers import Qwen2ForCausalLM

    from rstitch_core.shapes import shape_config

    with torch.device("meta"):
        model = Qwen2ForCausalLM(shape_config(name))
    assert sum(p.numel() for p in model.parameters()) == params


def dtype_profile(dtype: str, step: float, per_token: float) -> CostProfile:
    key = ProfileKey(**{**vars(KEY), "dtype": dtype})
    return CostProfile(key, PassCost((step / 3, per_token / 3, 0, 0, 0, 0)), PassCost((step, per_token, 0, 0, 0, 0)))


def test_choose_dtype_follows_the_decode_and_verify_costs():
    # bfloat16 emulated (AVX2): the cheaper decode step, but a multi-token pass costs ~0.45 steps a token
    bf16 = dtype_profile("bfloat16", step=0.17, per_token=0.14)
    fp32 = dtype_profile("float32", step=0.40, per_token=0.05)
    choice = choose_dtype([bf16, fp32], draft_tokens=8)
    assert choice.dtype == "float32" and choice.prefill_dtype == "float32" and choice.prefill is None
    assert any(line.startswith("bfloat16: LLM decode step") for line in choice.lines)
    assert choose_dtype([bf16, fp32], draft_tokens=1).dtype == "bfloat16"
    # Decoding one token at a time bf16 wins; passes of >= 5 tokens are 20% cheaper in float32 (0.65 <= 0.8 x 0.87).
    choice = choose_dtype([bf16, fp32], draft_tokens=0)
    assert (choice.dtype, choice.prefill_dtype, choice.prefill_min_tokens) == ("bfloat16", "float32", 5)
    assert choice.prefill.dtype == "float32" and "recommended prefill: float32:5" in choice.lines[-1]
    native = dtype_profile("bfloat16", step=0.17, per_token=0.01)  # AMX: bf16 wins both, no copy
    assert choose_dtype([native, fp32]).prefill is None
    with pytest.raises(ValueError, match="differ only in dtype: hardware"):
        choose_dtype([bf16, CostProfile(ProfileKey(**{**vars(KEY), "hardware": "x"}), bf16.slm, bf16.llm)])


def test_cached_or_measured_measures_once_then_reuses(engine, tmp_path, monkeypatch):
    from rstitch_core.drafting import profiling

    monkeypatch.setattr(profiling, "CPU_GRID", SMALL_GRID)
    lines = []
    first = profiling.cached_or_measured(engine.slm, engine.llm, tmp_path, log=lines.append)
    again = profiling.cached_or_measured(engine.slm, engine.llm, tmp_path, log=lines.append)
    assert again == first and lines[-2].startswith("wrote ") and lines[-1].startswith("reusing ")


@pytest.mark.parametrize("change, message", [(dict(sizes=(2, 4)), "sizes must include 1"),
                                             (dict(contexts=()), "must be non-empty"),
                                             (dict(rounds=0), "rounds >= 1")])
def test_a_bad_grid_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        Grid(**{**vars(SMALL_GRID), **change})


def test_an_isa_limit_in_the_environment_is_another_machine(monkeypatch):
    from rstitch_core.drafting.profile import hardware_name

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    plain = hardware_name(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert hardware_name(torch.device("cpu")) == f"{plain} [ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2]"

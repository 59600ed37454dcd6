"""The latency cost model: the fit recovers known coefficients; profiling a real runner fits."""

import pytest

from rstitch_core.costmodel import CostModel, ModelCost, fit, profile


def test_fit_recovers_known_coefficients_from_synthetic_timings():
    truth = ModelCost((2e-7, 3e-6, 1.5e-3, 4e-2), (5e-6, 3e-2))
    prefills = [(n, kv, truth.prefill_seconds(n, kv)) for n in (2, 8, 32, 128, 256) for kv in (0, 64, 512, 2048)]
    decodes = [(kv, truth.decode_seconds(kv)) for kv in (16, 128, 1024, 4096)]
    got = fit(prefills, decodes)
    assert got.prefill == pytest.approx(truth.prefill, rel=1e-6)
    assert got.decode == pytest.approx(truth.decode, rel=1e-6)


def test_fit_is_robust_to_noise_and_refuses_too_few_points():
    import random

    rng = random.Random(0)
    truth = ModelCost((1e-7, 2e-6, 1e-3, 2e-2), (4e-6, 2e-2))
    prefills = [(n, kv, truth.prefill_seconds(n, kv) * rng.uniform(0.97, 1.03))
                for n in (2, 8, 32, 128) for kv in (0, 128, 1024) for _ in range(3)]
    decodes = [(kv, truth.decode_seconds(kv) * rng.uniform(0.97, 1.03)) for kv in (16, 256, 2048) for _ in range(3)]
    got = fit(prefills, decodes)
    for n, kv in ((16, 512), (128, 1024)):
        assert got.prefill_seconds(n, kv) == pytest.approx(truth.prefill_seconds(n, kv), rel=0.05)
    assert got.decode_seconds(1000) == pytest.approx(truth.decode_seconds(1000), rel=0.05)
    with pytest.raises(ValueError, match="need >= 4 prefill"):
        fit(prefills[:3], decodes)


def test_trajectory_estimate_and_save_load(tmp_path):
    model = CostModel(ModelCost((0, 0, 1e-3, 1e-2), (0, 1e-2)), ModelCost((0, 0, 3e-3, 3e-2), (0, 3e-2)), "cpu")
    passes = [("slm", 20, 0), ("slm", 1, 20), ("llm", 21, 0), ("slm", 1, 21)]
    assert model.trajectory_seconds(passes) == pytest.approx(0.03 + 0.01 + 0.093 + 0.01)
    model.save(tmp_path / "cost.json")
    assert CostModel.load(tmp_path / "cost.json") == model
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a cost model file"):
        CostModel.load(tmp_path / "bad.json")


def test_profile_fits_a_real_runner(engine):
    cost = profile(engine.llm, sizes=(2, 8, 32), contexts=(16, 64), reps=1)
    assert cost.decode_seconds(64) > 0 and cost.prefill_seconds(32, 64) > 0

"""`rstitch profile` on the tiny pair: measures and caches a profile, reuses it, compares dtypes;
`rstitch eval report --cost-profile` projects recorded runs and says so."""

from __future__ import annotations

import json

import pytest

from rstitch_cli.common import pick_dtype
from rstitch_cli.main import main
from rstitch_core.drafting.cost import PassCost
from rstitch_core.drafting.profile import CostProfile, ProfileKey, default_path


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_profile_measures_once_then_reuses_and_recommends_a_dtype(pair_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RSTITCH_CACHE", str(tmp_path / "cache"))
    pair = ["--slm", pair_dirs[0], "--llm", pair_dirs[1]]
    code, out, err = cli(capsys, "profile", *pair, "--dtype", "float32")
    assert code == 0 and "wrote" in err and "float32 on cpu" in out and "draft limit at 8 row(s)" in out
    saved = list((tmp_path / "cache" / "profiles").glob("*.json"))
    assert len(saved) == 1 and "float32-cpu" in saved[0].name
    measured = CostProfile.load(saved[0])
    assert measured.key.threads > 0 and measured.llm.decode_seconds(100) > 0

    # A bfloat16 profile of the same key, much slower: both are reused and float32 recommended.
    bf16_key = ProfileKey(**{**vars(measured.key), "dtype": "bfloat16"})
    slow = PassCost(tuple(10 * c for c in measured.llm.coef), measured.llm.knee)
    CostProfile(bf16_key, slow, slow).save(default_path(bf16_key))
    code, out, err = cli(capsys, "profile", *pair, "--dtype", "float32,bfloat16", "--out", tmp_path / "p.json")
    assert code == 0 and err.count("reusing") == 2
    assert "recommended dtype: float32" in out
    assert CostProfile.load(tmp_path / "p.float32.json") == measured
    assert CostProfile.load(tmp_path / "p.bfloat16.json").key == bf16_key
    # With both saved, --dtype auto follows them, and says so; explicit dtypes are kept.
    assert pick_dtype("auto", "cpu", str(pair_dirs[0]), str(pair_dirs[1])) == ("float32", None)
    assert "the faster decoder in this machine's saved profiles" in capsys.readouterr().err
    assert pick_dtype("bfloat16", "cpu", str(pair_dirs[0]), str(pair_dirs[1])) == ("bfloat16", None)


def test_auto_prefill_follows_profiles_where_bf16_decodes_faster_but_prefills_slower(pair_dirs, tmp_path,
                                                                                     monkeypatch, capsys):
    # The AVX2 case: bf16 decodes (and verifies 8 drafts) faster, float32 runs long passes faster.
    from rstitch_cli.common import pair_configs as configs
    from rstitch_core.drafting.profile import profile_key
    from rstitch_core.models.prefill import PrefillSpec

    monkeypatch.setenv("RSTITCH_CACHE", str(tmp_path / "cache"))
    slm, llm = str(pair_dirs[0]), str(pair_dirs[1])
    for dtype, step, per_token in (("bfloat16", 0.2, 0.06), ("float32", 0.55, 0.01)):
        key = profile_key(*configs((slm, llm, False)), dtype, "cpu")
        cost = PassCost((step, per_token, 0, 0, 0, 0))
        CostProfile(key, cost, cost).save(default_path(key))
    # crossover: 0.55 + 0.01 n <= 0.8 (0.2 + 0.06 n) from n = 11 (0.66 <= 0.688; at 10: 0.65 > 0.64)
    assert pick_dtype("auto", "cpu", slm, llm) == ("bfloat16", PrefillSpec("float32", 11))
    assert "passes of >= 11 tokens run on a float32 copy" in capsys.readouterr().err
    assert pick_dtype("auto", "cpu", slm, llm, prefill="off") == ("bfloat16", None)
    assert pick_dtype("auto", "cpu", slm, llm, prefill="float32:64") == ("bfloat16", PrefillSpec("float32", 64))
    assert pick_dtype("float32", "cpu", slm, llm) == ("float32", None)  # the profiles' prefill is for bf16 decoding
    with pytest.raises(ValueError, match="already run in float32, so a float32 copy would change nothing"):
        pick_dtype("float32", "cpu", slm, llm, prefill="float32:8")
    # Loaded that way, the engine's models carry the copy, and a prompt runs on it.
    code, out, err = cli(capsys, "generate", "--slm", slm, "--llm", llm, "--prompt", "def add(a, b):",
                         "--max-new-tokens", "4", "--policy", "llm")
    assert code == 0 and "passes of >= 11 tokens run on a float32 copy" in err


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "qwen2.5-0.5b,qwen2.5-1.5b", "--slm", "x", "--llm", "y"], "not both"),
    (["--shapes", "qwen2.5-0.5b"], "takes two names"),
    (["--shapes", "qwen2.5-0.5b,qwen9"], "unknown model shape 'qwen9'"),
    (["--shapes", "qwen2.5-0.5b,qwen2.5-1.5b", "--dtype", "int8"], "unknown dtype 'int8'"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    code, _, err = cli(capsys, "profile", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def record(problem_id, config, policy, prompt, generated, slm=0, llm=0, drafted=0, accepted=0, to_llm=0,
           to_slm=0, discarded=0, **extra):
    return {"problem_id": problem_id, "config": config, "policy": policy, "correct": True, "latency_s": 1.0,
            "prompt_tokens": prompt, "generated_tokens": generated, "slm_tokens": slm, "llm_tokens": llm,
            "drafted_tokens": drafted, "accepted_tokens": accepted, "switches_slm_to_llm": to_llm,
            "switches_llm_to_slm": to_slm, "switches": to_llm + to_slm, "discarded_tokens": discarded,
            "finish_reason": "eos", "threshold": None, **extra}


def test_eval_report_projects_recorded_runs_on_a_profile(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    records = [record(0, "llm", "llm", 10, 11, llm=11),
               record(0, "speculative", "speculative", 10, 11, slm=8, llm=3, drafted=12, accepted=8),
               record(0, "verified", "verified", 10, 11, slm=8, llm=3)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    # Every pass costs its fixed cost alone: 0.1 s an LLM pass, 0.02 s an SLM pass.
    key = ProfileKey("qwen2-small", "qwen2-large", "bfloat16", "cuda", "Test GPU")
    CostProfile(key, PassCost((0.02, 0, 0, 0, 0, 0)), PassCost((0.1, 0, 0, 0, 0, 0))).save(tmp_path / "gpu.json")
    code, stdout, err = cli(capsys, "eval", "report", "--out", out, "--cost-profile", tmp_path / "gpu.json")
    assert code == 0 and "projected, not measured" in err
    projection = json.loads((out / "projected.json").read_text())
    rows = {r["config"]: r for r in projection["rows"]}
    assert rows["llm"]["projected_mean_latency_s"] == pytest.approx(11 * 0.1)  # a prefill + 10 decode steps
    # 3 rounds (11 tokens - 8 accepted): 3 LLM passes, 12 SLM passes
    assert rows["speculative"]["projected_mean_latency_s"] == pytest.approx(3 * 0.1 + 12 * 0.02)
    assert rows["speculative"]["projected_speedup"] == pytest.approx(1.1 / 0.54)
    assert projection["not_priced"] == ["verified"]
    md = (out / "projected.md").read_text()
    assert md.startswith("Projected (not measured) on Test GPU") and "Projected (not measured)" in stdout
    code, _, err = cli(capsys, "eval", "report", "--out", out, "--cost-profile", tmp_path / "missing.json")
    assert code == 2 and "not a cost profile" in err
    (out / "projected.md").unlink()
    assert cli(capsys, "eval", "report", "--out", out)[0] == 0 and not (out / "projected.md").exists()


@pytest.mark.parametrize("pair, policy, tau", [("engine", "llm", 0.0), ("close_pair", "speculative", 0.0),
                                               ("engine", "speculative", 0.0), ("engine", "rstitch", 0.5)])
def test_passes_rebuilt_from_counts_match_the_engines_passes(request, pair, policy, tau):
    from rstitch_core import Policy, RoutingParams, SamplingParams
    from rstitch_eval.projection import record_passes

    engine = request.getfixturevalue(pair)  # close_pair: drafts are partly accepted
    prompt = engine.encode("the quick brown fox")
    routing = RoutingParams(policy=Policy.parse(policy), threshold=tau, draft_tokens=4)
    gen, passes = engine.rollout(prompt, SamplingParams(max_new_tokens=40), routing)
    s = gen.stats
    if pair == "close_pair":
        assert 0 < s.accepted_tokens < s.drafted_tokens
    if policy == "rstitch":
        assert s.switches_slm_to_llm > 1 and s.switches_llm_to_slm > 1
    rebuilt = record_passes(record(0, policy, policy, s.prompt_tokens, s.generated_tokens, slm=s.slm.tokens,
                                   llm=s.llm.tokens, drafted=s.drafted_tokens, accepted=s.accepted_tokens,
                                   to_llm=s.switches_slm_to_llm, to_slm=s.switches_llm_to_slm,
                                   discarded=s.discarded_tokens))
    for model in ("slm", "llm"):
        mine = [(n, count) for m, n, _, _, count in rebuilt if m == model and count]
        assert sum(c for _, c in mine) == len(passes.get(model, []))  # as many passes
        fed = sum(n for n, _ in passes.get(model, []))
        assert sum(n * c for n, c in mine) == pytest.approx(fed, rel=0.1, abs=2)  # about as many tokens fed

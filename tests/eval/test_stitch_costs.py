"""benchmarks/stitch_costs.py: R-Stitch's time split by a run's own SLM-only and LLM-only costs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stitch_costs.py"
spec = importlib.util.spec_from_file_location("stitch_costs", SCRIPT)
stitch_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stitch_costs)


def record(problem, config, latency, tokens, slm=0, llm=0, discarded=0, switches=0):
    return {"problem_id": problem, "config": config, "latency_s": latency, "generated_tokens": tokens,
            "slm_tokens": slm, "llm_tokens": llm, "discarded_tokens": discarded, "switches": switches}


@pytest.fixture
def run(tmp_path):
    # Two problems; SLM 0.1 s and LLM 0.25 s per token. R-Stitch writes 60 SLM + 40 LLM tokens,
    # discards 10 SLM passes and spends 1 s elsewhere: 6 + 1 + 10 + 1 = 18 s per problem.
    records = []
    for p in (0, 1):
        records += [record(p, "llm", 25.0, 100, llm=100), record(p, "slm", 10.0, 100, slm=100),
                    record(p, "rstitch@0.02", 18.0, 100, slm=60, llm=40, discarded=10, switches=20)]
    records.append(record(2, "rstitch@0.02", 5.0, 10, slm=10))  # no baselines for problem 2: left out
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_breakdown_prices_each_part_by_the_baselines(run):
    b = stitch_costs.breakdown(stitch_costs.load(run), "rstitch@0.02")
    assert b["problems"] == 2
    assert b["speedup"] == pytest.approx(25 / 18)
    assert b["llm_share"] == pytest.approx(0.4) and b["tokens_per_switch"] == pytest.approx(5)
    assert b["cost_ratio"] == pytest.approx(2.5)
    shares = b["time_shares"]
    assert [shares[k] for k in ("slm_kept", "slm_discarded", "llm_tokens", "rest")] == \
        pytest.approx([6 / 18, 1 / 18, 10 / 18, 1 / 18])
    assert b["free_switch_speedup"] == pytest.approx(25 / 16)  # 60 x 0.1 + 40 x 0.25
    # 2x = 12.5 s = 10 + 15 s x share
    assert b["share_for_2x"] == pytest.approx(2.5 / 15)


def test_cli_prints_the_table_and_needs_the_baselines(run, tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, check=True).stdout
    assert "| rstitch@0.02 | 2 | 1.39x | 40.0% | 5.0 | 33% / 6% / 56% / 6% | 1.56x | 16.7% |" in out
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "results.jsonl").write_text(json.dumps(record(0, "rstitch@0.02", 1.0, 1)) + "\n")
    failed = subprocess.run([sys.executable, str(SCRIPT), str(lonely)], capture_output=True, text=True)
    assert failed.returncode == 2 and "needs the llm and slm configurations" in failed.stderr

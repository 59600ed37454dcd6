"""Summary maths: Wilson intervals, speedup over common problems, token-weighted LLM share, pairing."""

import pytest

from eval.records import record
from rstitch_eval.summary import markdown_table, mcnemar_p, summarize, wilson_interval


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no correction)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_known_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=6e-5)


def test_wilson_interval_without_data_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)


def rows(summary):
    return {r["config"]: r for r in summary["configs"]}


def test_speedup_counts_only_problems_both_finished():
    records = [record(0, "llm", True, 10.0), record(1, "llm", True, 30.0),
               record(0, "slm", True, 2.0), record(1, "slm", False, 6.0), record(2, "slm", True, 100.0)]
    slm = rows(summarize(records))["slm"]
    assert slm["n"] == 3 and slm["common_n"] == 2
    assert slm["speedup"] == pytest.approx(40.0 / 8.0)  # problem 2 has no LLM-only run: left out
    assert slm["median_speedup"] == pytest.approx(5.0)
    assert slm["mean_latency_s"] == pytest.approx(36.0) and slm["median_latency_s"] == 6.0


def test_median_speedup_is_the_median_of_per_problem_ratios():
    records = [record(i, "llm", True, t) for i, t in enumerate([10.0, 10.0, 100.0])]
    records += [record(i, "rstitch@0.02", True, t) for i, t in enumerate([5.0, 2.0, 100.0])]
    r = rows(summarize(records))["rstitch@0.02"]
    assert r["speedup"] == pytest.approx(120.0 / 107.0)
    assert r["median_speedup"] == pytest.approx(2.0)  # ratios 2, 5, 1


def test_llm_token_share_is_token_weighted():
    records = [record(0, "rstitch@0.02", True, 1.0, generated=100, llm_tokens=50),
               record(1, "rstitch@0.02", True, 1.0, generated=10, llm_tokens=10)]
    r = rows(summarize(records))["rstitch@0.02"]
    assert r["llm_token_share"] == pytest.approx(60 / 110)  # not the mean of 0.5 and 1.0
    assert r["mean_generated_tokens"] == 55.0


def test_accuracy_interval_and_paired_counts():
    llm = [True, True, True, False, False]
    stitch = [True, False, False, True, False]
    records = [record(i, "llm", c, 1.0) for i, c in enumerate(llm)]
    records += [record(i, "rstitch@0.05", c, 0.5, switches=4, finish="length" if i == 0 else "eos")
                for i, c in enumerate(stitch)]
    summary = summarize(records)
    r = rows(summary)["rstitch@0.05"]
    assert (r["correct"], r["n"], r["accuracy"]) == (2, 5, 0.4)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(2, 5))
    assert (r["only_this_right"], r["only_llm_right"]) == (1, 2)
    assert r["accuracy_delta"] == pytest.approx(-0.2)
    assert r["mcnemar_p"] == pytest.approx(1.0)
    assert r["mean_switches"] == 4 and r["truncated"] == pytest.approx(0.2)
    assert rows(summary)["llm"]["speedup"] == 1.0
    assert summary["problems"] == 5 and summary["baseline"] == "llm"


def test_configs_are_ordered_and_the_table_has_a_row_each():
    records = [record(0, c, True, 1.0) for c in ["rstitch@0.05", "slm", "rstitch@0.001", "speculative", "llm"]]
    summary = summarize(records)
    assert [r["config"] for r in summary["configs"]] == ["llm", "slm", "speculative", "rstitch@0.001", "rstitch@0.05"]
    table = markdown_table(summary).splitlines()
    assert len([line for line in table if line.startswith("| ")]) == 1 + 5
    assert any(line.startswith("| rstitch@0.05 | 1 | 100.0% (") for line in table)


def test_without_llm_only_there_is_no_speedup():
    summary = summarize([record(0, "slm", True, 1.0)])
    assert summary["baseline"] is None and "speedup" not in summary["configs"][0]
    assert "| slm | 1 |" in markdown_table(summary)

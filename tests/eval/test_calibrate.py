"""Choosing tau from a calibration slice, and the plot of a summary."""

import pytest

from eval.records import record
from rstitch_eval.calibrate import choose_threshold
from rstitch_eval.plot import plot_summary
from rstitch_eval.summary import summarize

PNG = b"\x89PNG\r\n\x1a\n"


def slice_summary():
    """10 problems; LLM-only right on 8. Larger tau: fewer LLM tokens, lower accuracy."""
    llm_right = [True] * 8 + [False] * 2
    configs = {  # tau: (problems right, LLM tokens of 100)
        "0.001": (8, 90), "0.01": (8, 60), "0.02": (7, 40), "0.05": (5, 10),
    }
    records = [record(i, "llm", c, 10.0, generated=100, llm_tokens=100) for i, c in enumerate(llm_right)]
    for tau, (right, llm_tokens) in configs.items():
        records += [record(i, f"rstitch@{tau}", i < right, 10.0 * llm_tokens / 100 + 1, generated=100,
                           llm_tokens=llm_tokens) for i in range(10)]
    return summarize(records)


@pytest.mark.parametrize("share, tau", [(0.5, 0.01), (0.4, 0.02), (0.05, 0.05), (0.9, 0.001)])
def test_largest_tau_meeting_an_llm_share(share, tau):
    choice = choose_threshold(slice_summary(), min_llm_share=share)
    assert choice.threshold == tau
    assert choice.explanation[-1].startswith(f"chosen: tau={tau:g}")


@pytest.mark.parametrize("drop, tau", [(0.0, 0.01), (0.1, 0.02), (0.3, 0.05)])
def test_largest_tau_within_an_accuracy_drop(drop, tau):
    choice = choose_threshold(slice_summary(), max_accuracy_drop=drop)
    assert choice.threshold == tau
    assert "McNemar" in choice.explanation[-1]


def test_calibration_errors_say_why():
    with pytest.raises(ValueError, match="no tau meets the target"):
        choose_threshold(slice_summary(), min_llm_share=0.95)
    with pytest.raises(ValueError, match="exactly one target"):
        choose_threshold(slice_summary())
    with pytest.raises(ValueError, match="fraction in"):
        choose_threshold(slice_summary(), max_accuracy_drop=2)
    with pytest.raises(ValueError, match="no rstitch"):
        choose_threshold(summarize([record(0, "llm", True, 1.0)]), min_llm_share=0.1)
    with pytest.raises(ValueError, match="needs LLM-only results"):
        choose_threshold(summarize([record(0, "rstitch@0.02", True, 1.0)]), max_accuracy_drop=0.1)


def test_plot_is_a_png_with_and_without_a_baseline(tmp_path):
    summary = slice_summary()
    summary["configs"].extend(summarize([record(0, "slm", True, 1.0), record(0, "speculative", True, 2.0),
                                         record(0, "llm", True, 4.0)])["configs"][1:])
    path = plot_summary(summary, tmp_path / "a.png")
    assert path.read_bytes()[:8] == PNG
    lonely = summarize([record(0, "rstitch@0.02", True, 1.0), record(0, "slm", False, 0.5)])
    assert plot_summary(lonely, tmp_path / "b.png").read_bytes()[:8] == PNG


def test_verified_points_are_plotted_and_labelled_with_their_rule(tmp_path):
    from rstitch_eval.plot import _point_label

    exact = {"policy": "verified", "threshold": 0.1, "config": "verified@0.1:k=8"}
    assert _point_label(exact) == "τ=0.1, exact"
    assert _point_label({**exact, "config": "verified@0.1:relaxed=0.5:k=8"}) == "τ=0.1, relaxed 0.5"
    assert _point_label({**exact, "threshold": None}) == "exact"  # a projected run may carry no tau
    records = [record(0, "llm", True, 4.0)]
    for label in ("verified@0.1:k=8", "verified@0.1:relaxed=0.3:k=8"):
        records.append({**record(0, "llm", True, 2.0), "config": label, "policy": "verified", "threshold": 0.1})
    assert plot_summary(summarize(records), tmp_path / "v.png").read_bytes()[:8] == PNG

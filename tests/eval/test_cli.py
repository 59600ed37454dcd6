"""`rstitch eval` end to end on the tiny random pair: 2 real GSM8K problems, 3 configurations."""

import json

import pytest

from rstitch_cli.main import main

PNG = b"\x89PNG\r\n\x1a\n"


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(pair_dirs, gsm8k, tmp_path_factory):
    return tmp_path_factory.mktemp("eval"), pair_dirs


def eval_args(pair_dirs, out, *extra):
    slm, llm = map(str, pair_dirs)
    return ["eval", "--dataset", "gsm8k", "--slm", slm, "--llm", llm, "--dtype", "float32", "--limit", "2",
            "--policies", "llm,speculative,rstitch", "--thresholds", "0.5", "--max-new-tokens", "6",
            "--out", str(out), *extra]


def test_eval_writes_records_summary_and_plot_then_resumes(run_dir, capsys):
    out, pair_dirs = run_dir
    code, stdout, stderr = cli(capsys, *eval_args(pair_dirs, out))
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["problem_id"], r["config"]) for r in records] == [
        (0, "llm"), (0, "speculative"), (0, "rstitch@0.5"), (1, "llm"), (1, "speculative"), (1, "rstitch@0.5")]
    for r in records:
        assert r["generated_tokens"] == r["slm_tokens"] + r["llm_tokens"] <= 6
        assert r["gold"] in ("18", "3") and isinstance(r["correct"], bool) and r["latency_s"] > 0
    assert all(r["slm_tokens"] == 0 for r in records if r["config"] == "llm")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 2 and summary["settings"]["max_new_tokens"] == 6
    rows = {r["config"]: r for r in summary["configs"]}
    assert set(rows) == {"llm", "speculative", "rstitch@0.5"} and rows["llm"]["speedup"] == 1.0
    assert rows["rstitch@0.5"]["common_n"] == 2
    assert (out / "summary.md").read_text().count("\n| ") == 1 + 3
    assert (out / "accuracy_vs_speedup.png").read_bytes()[:8] == PNG
    assert "| rstitch@0.5 | 2 |" in stdout and "eval" in stderr  # the table, and the progress bar
    code, _, _ = cli(capsys, *eval_args(pair_dirs, out))  # nothing left to run
    assert code == 0 and len((out / "results.jsonl").read_text().splitlines()) == 6
    code, _, stderr = cli(capsys, *eval_args(pair_dirs, out, "--max-new-tokens", "7"))
    assert code == 2 and "holds results made with max_new_tokens=6, not 7; use another --out" in stderr


def test_report_and_calibrate_read_the_results(run_dir, capsys):
    out, _ = run_dir
    (out / "accuracy_vs_speedup.png").unlink()
    code, stdout, _ = cli(capsys, "eval", "report", "--out", str(out))
    assert code == 0 and "| llm | 2 |" in stdout and (out / "accuracy_vs_speedup.png").is_file()
    code, stdout, _ = cli(capsys, "eval", "calibrate", "--out", str(out), "--target-llm-share", "0")
    assert code == 0 and stdout.strip().splitlines()[-1].startswith("chosen: tau=0.5")


@pytest.mark.parametrize("extra, message", [
    (["--thresholds", "abc"], "--thresholds must be a comma list of numbers"),
    (["--thresholds", "1.5"], "threshold (tau) must be a number in [0, 1], got 1.5"),
    (["--policies", "llm,fast"], "unknown policy 'fast'"),
    (["--limit", "0"], "--limit >= 1"),
    (["--offset", "5000"], "--offset must be below 1319"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--draft-tokens", "0"], "draft_tokens must be an integer in [1, 64]"),
])
def test_bad_arguments_exit_2_with_one_line(run_dir, capsys, extra, message):
    out, pair_dirs = run_dir
    code, stdout, stderr = cli(capsys, *eval_args(pair_dirs, out, *extra))
    assert code == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and message in stderr


def test_calibrate_and_report_need_results(tmp_path, capsys):
    code, _, err = cli(capsys, "eval", "calibrate", "--out", str(tmp_path), "--max-accuracy-drop", "0.02")
    assert code == 2 and "holds no results" in err
    code, _, err = cli(capsys, "eval", "report", "--out", str(tmp_path))
    assert code == 2 and "holds no results" in err

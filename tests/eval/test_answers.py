"""Answer extraction and numeric comparison on hand-written model outputs."""

import pytest

from rstitch_eval.answers import extract_answer, is_correct, parse_number


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = 18 dollars.\nThe answer is 18.", "18"),
    ("The answer is 1,250.", "1250"),
    ("The answer is $1,600,000.", "1600000"),
    ("The answer is: **42** apples.", "42"),
    ("The total is 5 km.\nThe answer is 12.5 km.", "12.5"),
    ("The answer is -7.", "-7"),
    ("The answer is 0.25", "0.25"),
    ("Thus, the answer is \\(\\boxed{48}\\).", "48"),
    ("So she pays \\boxed{\\$1,250.50} in total.", "1250.5"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{\\dfrac{1}{3}}", "1/3"),
    ("First \\boxed{5}, no wait, the answer is \\boxed{7}.", "7"),
    ("The answer is 18. I hope this helps! Let me know about the other 3 questions.", "18"),
    ("#### 72", "72"),
    ("Final answer: 3.50", "3.5"),
    ("We get 20 - 5 = 15", "15"),
    ("We get 20-5", "5"),  # a binary minus is not a sign
    ("The temperature drops to -3 degrees", "-3"),
    ("Half of them, 50%, stayed", "50"),
    ("It takes .5 hours", "0.5"),
    ("He earns $45 per hour and works 40 hours, so he earns $1,800", "1800"),
    ("I cannot solve this problem.", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("prediction, gold, ok", [
    ("18", "18", True), ("18.00", "18", True), ("1600", "1,600", True), ("$1,600", "1600", True),
    ("17", "18", False), ("-5", "5", False), ("0.33", "1/3", False), ("1/3", "1/3", True), ("2.5", "5/2", True),
    (None, "18", False), ("abc", "18", False),
])
def test_is_correct(prediction, gold, ok):
    assert is_correct(prediction, gold) is ok


def test_parse_number():
    assert parse_number("1,234.5 km") == pytest.approx(1234.5)
    assert parse_number("no digits") is None

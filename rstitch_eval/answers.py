"""The final numeric answer in a model's output, and numeric comparison with a gold answer.

Where to look, first hit wins: the last `\\boxed{...}`; else the last "The answer is N" (or
"answer: N", "#### N"); else the last number in the text. Numbers may carry thousands separators,
a sign, decimals, a currency sign, a percent sign or a unit ("$1,250.50", "-3", "45 km", "12%").
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

# A minus sign counts only where it cannot be a binary minus ("20-5" is not -5).
_NUMBER = r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
NUMBER = re.compile(_NUMBER)
ANSWER = re.compile(r"(?:answer\s*(?:is|:|=)|####)[\s:=*$\\({\[]*(?:\\text\{|\\textbf\{|\\\$)?\s*(" + _NUMBER + ")",
                    re.IGNORECASE)
BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(" + _NUMBER + r")\s*\}\s*\{\s*(" + _NUMBER + r")\s*\}")
LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact fraction ("1,600" -> 1600, "$-2.50" -> -5/2), or None."""
    match = NUMBER.search(text.replace("$", ""))
    return Fraction(match.group().replace(",", "")) if match else None


def extract_answer(text: str) -> str | None:
    """The model's final answer as a canonical number string ("1600", "2.5", "1/3"), or None."""
    value = _boxed_value(text)
    if value is None:
        matches = ANSWER.findall(text)
        value = parse_number(matches[-1]) if matches else None
    if value is None:
        numbers = NUMBER.findall(text.replace("$", ""))
        value = Fraction(numbers[-1].replace(",", "")) if numbers else None
    return None if value is None else format_number(value)


def is_correct(prediction: str | None, gold: str) -> bool:
    """Whether the prediction equals the gold answer as a number (relative tolerance 1e-6)."""
    if prediction is None:
        return False
    pred, ref = _value(prediction), _value(gold)
    if pred is None or ref is None:
        return False
    return abs(pred - ref) <= Fraction(1, 10**6) * max(1, abs(ref))


def _value(text: str) -> Fraction | None:
    """A canonical answer ("1600", "2.5", "1/3") exactly, else the first number in the text."""
    try:
        return Fraction(text.replace(",", "").replace("$", "").strip())
    except (ValueError, ZeroDivisionError):
        return parse_number(text)


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # a terminating decimal: write it exactly
        return format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return f"{value.numerator}/{value.denominator}"


def _boxed_value(text: str) -> Fraction | None:
    starts = [m.end() for m in BOXED.finditer(text)]
    for start in reversed(starts):
        content = _balanced(text, start)
        if content is None:
            continue
        frac = FRAC.search(content)
        if frac:
            num, den = (Fraction(g.replace(",", "")) for g in frac.groups())
            if den:
                return num / den
        content = LATEX_WRAPPERS.sub(r" \1 ", content).replace("\\$", "").replace("\\%", "").replace("\\,", "")
        numbers = NUMBER.findall(content.replace("$", ""))
        if numbers:
            return Fraction(numbers[-1].replace(",", ""))
    return None


def _balanced(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing the one just before it, or None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None

"""The evaluation tasks: where problems come from, how each is asked, and how answers are read.

`gsm8k` is the real benchmark (chat prompt, real models). `arith` is the synthetic arithmetic-chain
task that `rstitch train-pair` trains a pair on (raw prompt, 19-symbol vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rstitch_eval import arith
from rstitch_eval.answers import extract_answer, is_correct
from rstitch_eval.gsm8k import Problem, load_gsm8k
from rstitch_eval.prompts import PROMPT_VERSION, gsm8k_messages


@dataclass(frozen=True)
class Task:
    name: str
    prompt_version: str  # recorded in run.json: results of different prompts never mix
    size: int | None  # number of problems, None if unbounded
    _load: Callable[[int, int], list[Problem]]
    request: Callable[[Problem], dict]  # keyword arguments for Engine.generate / the client
    extract: Callable[[str], str | None]

    def load(self, offset: int, limit: int | None) -> list[Problem]:
        """Problems offset .. offset+limit-1 (ValueError outside the task)."""
        if offset < 0 or (limit is not None and limit < 1):
            raise ValueError(f"offset must be >= 0 and limit >= 1, got {offset} and {limit}")
        if self.size is not None and offset >= self.size:
            raise ValueError(f"offset must be below {self.size} for {self.name}, got {offset}")
        if limit is None:
            if self.size is None:
                raise ValueError(f"limit is needed: {self.name} has no fixed number of problems")
            limit = self.size - offset
        if self.size is not None:
            limit = min(limit, self.size - offset)
        return self._load(offset, limit)

    def grade(self, text: str, gold: str) -> tuple[str | None, bool]:
        """(the extracted answer, whether it equals the gold answer)."""
        prediction = self.extract(text)
        return prediction, is_correct(prediction, gold)


def _gsm8k(offset: int, limit: int) -> list[Problem]:
    return load_gsm8k()[offset:offset + limit]


TASKS = {
    "gsm8k": Task("gsm8k", PROMPT_VERSION, 1319, _gsm8k,
                  lambda p: {"messages": gsm8k_messages(p.question)}, extract_answer),
    "arith": Task("arith", arith.PROMPT_VERSION, None, arith.load_arith,
                  lambda p: {"prompt": p.question}, arith.extract_answer),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; accepted: {', '.join(TASKS)}") from None

"""A synthetic reasoning task that a pair trained here in minutes can solve: arithmetic chains.

`3+4-2=?` is answered `3+4=7;7-2=5#5` and a newline (the EOS): each step applies the next operator
to the running value, left to right, and the answer follows `#`. Problem i is drawn from a seeded
stream, and every problem belongs to exactly one split by a hash of its text, so training (the pair
and its routers) never sees an evaluation problem.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

from rstitch_eval.gsm8k import Problem

SYMBOLS = "0123456789+-*=;#? \n"  # the whole vocabulary; the newline ends every answer
EOS = "\n"
PROMPT_VERSION = "arith-chain-v1"
OPERATORS = "+-*"
MIN_OPERANDS, MAX_OPERANDS = 2, 4
_EVAL_BUCKETS = 10  # one problem text in ten belongs to the evaluation split


def solve(operands: list[int], ops: list[str]) -> tuple[str, int]:
    """The worked chain and the result for `operands[0] ops[0] operands[1] ...` left to right."""
    value, steps = operands[0], []
    for op, b in zip(ops, operands[1:]):
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return ";".join(steps), value


def make_problem(rng: random.Random, pid: int) -> Problem:
    n = rng.randint(MIN_OPERANDS, MAX_OPERANDS)
    operands = [rng.randint(0, 9) for _ in range(n)]
    ops = [rng.choice(OPERATORS) for _ in range(n - 1)]
    question = "".join(f"{a}{op}" for a, op in zip(operands, ops)) + f"{operands[-1]}=?"
    chain, value = solve(operands, ops)
    return Problem(id=pid, question=question, answer=f"{chain}#{value}", short_answer=str(value))


def split_of(question: str) -> str:
    bucket = int(hashlib.sha256(question.encode()).hexdigest(), 16) % _EVAL_BUCKETS
    return "eval" if bucket == 0 else "train"


def problems(split: str, seed: int = 0) -> Iterator[Problem]:
    """A stream of `split` ("eval" or "train") problems; ids count within the split. The
    evaluation split never repeats a problem (it is finite: about 28k problems)."""
    if split not in ("eval", "train"):
        raise ValueError(f"split must be 'eval' or 'train', got {split!r}")
    rng = random.Random(f"arith-{split}-{seed}")
    pid, seen = 0, set()
    while True:
        p = make_problem(rng, pid)
        if split_of(p.question) != split or (split == "eval" and p.question in seen):
            continue
        if split == "eval":
            seen.add(p.question)
        yield p
        pid += 1


def load_arith(offset: int, limit: int, split: str = "eval") -> list[Problem]:
    """Problems offset .. offset+limit-1 of a split (the evaluation split by default)."""
    stream = problems(split)
    return [p for p, _ in zip(stream, range(offset + limit))][offset:]


def target_text(problem: Problem) -> str:
    """What a correct model writes after the prompt."""
    return problem.answer + EOS


def extract_answer(text: str) -> str | None:
    """The number after the last `#`, or None."""
    if "#" not in text:
        return None
    answer = text.rsplit("#", 1)[1].strip().split()
    return answer[0] if answer else None

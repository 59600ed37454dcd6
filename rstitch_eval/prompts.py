"""The zero-shot chat prompt for a GSM8K question (the tokenizer's chat template renders it).

Checked on the default Qwen2.5-Coder pair: the 0.5B model ends with "Thus, the answer is
\\(\\boxed{N}\\)." under this prompt, and boxes its result under Qwen's own math instruction too, so
answers.py reads `\\boxed{}` first, then "The answer is N", then the last number.
"""

from __future__ import annotations

PROMPT_VERSION = "gsm8k-zeroshot-v1"  # recorded with every run: results of different prompts never mix
INSTRUCTION = ('Solve the problem step by step, briefly. '
               'End with a final line of the form "The answer is N." where N is a number.')


def gsm8k_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{question.strip()}\n{INSTRUCTION}"}]

"""Turn a raw prompt or chat messages into prompt token ids."""

from __future__ import annotations

from typing import Any, Sequence


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Check chat messages: a non-empty list of {"role": str, "content": str}; return plain dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} objects, got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be an object with exactly 'role' and 'content', got {m!r:.80}")
        if not isinstance(m["role"], str) or not m["role"].strip():
            raise ValueError(f"messages[{i}].role must be a non-empty string, got {m['role']!r:.80}")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}].content must be a string, got {m['content']!r:.80}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in out):
        raise ValueError("messages must contain some non-empty content")
    return out


def encode_prompt(tokenizer, prompt: str | None = None,
                  messages: Sequence[dict[str, str]] | None = None) -> list[int]:
    """Exactly one of `prompt` (raw text) or `messages` (rendered with the tokenizer's chat
    template, ending with the assistant turn's opening) -> prompt token ids."""
    if (prompt is None) == (messages is None):
        raise ValueError("give exactly one of a prompt or chat messages")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r:.80}")
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        messages = validate_messages(messages)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat messages were given but the tokenizer has no chat template; send a raw prompt")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the prompt encodes to zero tokens")
    return list(ids)


def check_prompt_ids(ids: Sequence[int], max_context: int, vocab_size: int) -> None:
    """Reject an empty prompt, one that leaves no room to generate, or ids outside the vocabulary."""
    if not ids:
        raise ValueError("the prompt is empty")
    if len(ids) >= max_context:
        raise ValueError(f"the prompt has {len(ids)} tokens but the context window holds "
                         f"{max_context} (prompt plus at least one generated token must fit)")
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab_size})")


def check_request(ids: Sequence[int], max_new_tokens: int, max_context: int, vocab_size: int) -> None:
    """The checks every path runs (engine, gRPC, HTTP): the prompt's (check_prompt_ids), and a
    budget the context window could ever hold (a prompt plus budget past it ends at the window)."""
    if max_new_tokens > max_context:
        raise ValueError(f"sampling.max_new_tokens must be <= {max_context} (the context window), "
                         f"got {max_new_tokens}")
    check_prompt_ids(ids, max_context, vocab_size)

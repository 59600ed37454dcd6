"""Incremental detokenization and stop-string matching for streamed output."""

from __future__ import annotations

from dataclasses import dataclass

# Prompt tokens kept as decoding context so the first generated token gets its leading space
# right on tokenizers that strip it at the start of a decode (SentencePiece).
_PROMPT_CONTEXT = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without splitting multi-byte characters.

    Each push decodes only a short window (from the last emitted boundary), so the cost per token
    does not grow with the output. A token that ends inside a UTF-8 sequence decodes to U+FFFD; its
    text is held until the following tokens complete the character.
    """

    def __init__(self, tokenizer, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_ids[-_PROMPT_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        if len(text) > len(prefix) and not text.endswith(_REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """Text still held back (an incomplete character at the very end decodes as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        text = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):]


@dataclass
class TextOutput:
    """Streamed text with stop strings removed.

    Text that could still be the beginning of a stop string is held back (only the longest such
    suffix), so a stop string never reaches the client, even when it spans several tokens.
    """

    detokenizer: IncrementalDetokenizer
    stop: tuple[str, ...] = ()
    pending: str = ""
    text: str = ""  # everything emitted so far

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (text to emit now, whether a stop string was hit)."""
        self.pending += self.detokenizer.push(token_id)
        hit = self._first_stop()
        if hit is not None:
            return self._emit(self.pending[:hit]), True
        keep = self._held_suffix_length()
        return self._emit(self.pending[:len(self.pending) - keep], rest=self.pending[len(self.pending) - keep:]), False

    def finish(self) -> str:
        """Release everything held back at the end of generation (no stop string was hit)."""
        self.pending += self.detokenizer.flush()
        return self._emit(self.pending)

    def _emit(self, out: str, rest: str = "") -> str:
        self.pending = rest
        self.text += out
        return out

    def _first_stop(self) -> int | None:
        found = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _held_suffix_length(self) -> int:
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best

"""Core events -> OpenAI answers: one ChoiceWriter per choice turns its events into chunks (streamed)
or one choice object (whole), with logprobs in the chat or the legacy completions layout, and
an echoed prompt. Usage and the envelope of a multi-choice answer are assembled in services.openai_api.
"""

from __future__ import annotations

from rstitch_core.events import Event, FinishEvent, FinishReason, TokenEvent
from services.openai_protocol import OpenAIRequest

# OpenAI knows two reasons: the model ended (EOS, a stop string) or a limit cut it (budget, context).
FINISH_REASONS = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
                  FinishReason.CONTEXT: "length"}
FLOOR = -9999.0  # a logprob of -inf (a token masked by min_tokens or logit_bias) as vLLM writes it: JSON has no inf


def usage(finishes: list[FinishEvent], prompt_tokens: int) -> dict:
    """OpenAI's usage over every choice, plus the LLM's share of the generated tokens and the
    switches between models."""
    generated = sum(f.stats.generated_tokens for f in finishes)
    llm = sum(f.stats.llm.tokens for f in finishes)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated,
            "llm_token_share": llm / generated if generated else 0.0,
            "switches": sum(f.stats.switches_slm_to_llm + f.stats.switches_llm_to_slm for f in finishes)}


def token_fields(tokens: list[TokenEvent]) -> dict:
    """The "rstitch" extension of a chunk: which model wrote each of its tokens, at which entropy."""
    return {"token_ids": [t.token_id for t in tokens], "sources": [t.source for t in tokens],
            "entropies": [t.entropy for t in tokens]}


class Logprobs:
    """Token logprobs in OpenAI's layouts: chat {"content": [...]}, completions {"tokens",
    "token_logprobs", "top_logprobs", "text_offset"} (its top_logprobs also hold the chosen token, as vLLM's)."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat, self.offset = tokenizer, chat, 0

    def piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def of(self, items: list[tuple[int, float | None, tuple | None]]) -> dict:
        """items: (token id, logprob or None, alternatives or None) -> the logprobs object."""
        if self.chat:
            return {"content": [self._chat_item(t, lp, top) for t, lp, top in items]}
        tokens = [self.piece(t) for t, _, _ in items]
        offsets = []
        for piece in tokens:
            offsets.append(self.offset)
            self.offset += len(piece)
        return {"tokens": tokens, "token_logprobs": [None if lp is None else max(lp, FLOOR) for _, lp, _ in items],
                "top_logprobs": [None if top is None else self._top_dict(t, lp, top) for t, lp, top in items],
                "text_offset": offsets}

    def _chat_item(self, token: int, lp: float, top: tuple) -> dict:
        piece = self.piece(token)
        return {"token": piece, "logprob": max(lp, FLOOR), "bytes": list(piece.encode()),
                "top_logprobs": [{"token": (p := self.piece(t)), "logprob": max(v, FLOOR), "bytes": list(p.encode())}
                                 for t, v in top]}

    def _top_dict(self, token: int, lp: float, top: tuple) -> dict:
        out = {self.piece(t): max(v, FLOOR) for t, v in top}
        out.setdefault(self.piece(token), max(lp, FLOOR))
        return out


class ChoiceWriter:
    """One choice's events -> OpenAI chunks (`add`) or its whole choice object (`choice`)."""

    def __init__(self, req: OpenAIRequest, envelope: dict, tokenizer, prompt_text: str = "",
                 prompt_logprobs: list | None = None, prompt_ids: list[int] | None = None):
        """With req.echo: `prompt_text` comes before the generated text and, when logprobs are asked,
        `prompt_logprobs` (per prompt token, None for the first) before the generated tokens'."""
        self.req, self.envelope = req, envelope
        self.pending: list[TokenEvent] = []  # tokens whose text is still held back (partial character or stop)
        self.started = False
        self.logprobs = Logprobs(tokenizer, req.endpoint == "chat") if req.sampling.logprobs is not None else None
        self.echo = (prompt_text, [(t, *(lp or (None, None))) for t, lp in zip(prompt_ids or [], prompt_logprobs or [])]
                     if prompt_logprobs is not None else [])

    def add(self, event: Event) -> list[dict]:
        """The chunks one event completes: text as soon as it is final, tokens with their text."""
        out = []
        if not self.started:
            if self.req.endpoint == "chat":
                out.append(self._chunk({"role": "assistant", "content": ""}))  # OpenAI's first chunk names the role
            elif self.req.echo:
                out.append(self._chunk(self._delta(self.echo[0]), logprobs=self._logprobs_of(self.echo[1])))
        self.started = True
        if isinstance(event, TokenEvent):
            self.pending.append(event)
            if event.text:
                out.append(self._chunk(self._delta(event.text), rstitch=token_fields(self.pending),
                                       logprobs=self._logprobs(self.pending)))
                self.pending = []
        elif isinstance(event, FinishEvent):
            extension = {**token_fields(self.pending), "finish_reason": event.reason.value}
            out.append(self._chunk({} if self.req.endpoint == "chat" else self._delta(""),
                                   FINISH_REASONS.get(event.reason, "stop"), rstitch=extension,
                                   logprobs=self._logprobs(self.pending) if self.pending else None))
        return out

    def choice(self, events: list[Event]) -> dict:
        """The whole choice: text (after the echoed prompt), logprobs, finish reason, and the
        "rstitch" extension (every token's model and entropy)."""
        finish = next(e for e in events if isinstance(e, FinishEvent))
        tokens = [e for e in events if isinstance(e, TokenEvent)]
        text = (self.echo[0] if self.req.echo else "") + finish.text
        body = {"message": {"role": "assistant", "content": text}} if self.req.endpoint == "chat" else {"text": text}
        logprobs = None
        if self.logprobs is not None:
            logprobs = self._logprobs_of(self.echo[1] + [(t.token_id, t.logprob, t.top_logprobs) for t in tokens])
        return {"index": self.req.index, **body, "logprobs": logprobs,
                "finish_reason": FINISH_REASONS.get(finish.reason, "stop"),
                "rstitch": {**token_fields(tokens), "finish_reason": finish.reason.value}}

    def _logprobs(self, tokens: list[TokenEvent]) -> dict | None:
        return self._logprobs_of([(t.token_id, t.logprob, t.top_logprobs) for t in tokens])

    def _logprobs_of(self, items: list) -> dict | None:
        return None if self.logprobs is None else self.logprobs.of(items)

    def _delta(self, text: str) -> dict:
        return {"content": text} if self.req.endpoint == "chat" else {"text": text}

    def _chunk(self, delta: dict, finish_reason: str | None = None, rstitch: dict | None = None,
               logprobs: dict | None = None) -> dict:
        choice = ({"index": self.req.index, "delta": delta} if self.req.endpoint == "chat"
                  else {"index": self.req.index, **delta})
        choice.update(logprobs=logprobs, finish_reason=finish_reason)
        chunk = {**self.envelope, "choices": [choice]}
        if self.req.include_usage:
            chunk["usage"] = None  # OpenAI: every chunk but the last carries usage: null
        if rstitch is not None:
            chunk["rstitch"] = rstitch
        return chunk

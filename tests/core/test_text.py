from rstitch_core.text import IncrementalDetokenizer, TextOutput
from tiny_models import build_tokenizer

TEXT = "naïve café 日本語 🙂 crème brûlée\n\nThe answer is 72."


def _stream(tokenizer, text, stop=()):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = TextOutput(IncrementalDetokenizer(tokenizer, []), tuple(stop))
    deltas = []
    for t in ids:
        delta, hit = out.push(t)
        deltas.append(delta)
        if hit:
            return deltas, True
    deltas.append(out.finish())
    return deltas, False


def test_deltas_rebuild_the_text_and_never_split_characters():
    tok = build_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(TEXT.encode()) // 3  # multi-byte characters span several tokens
    deltas, hit = _stream(tok, TEXT)
    assert not hit and "".join(deltas) == TEXT
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_is_not_emitted_even_across_tokens():
    tok = build_tokenizer()
    deltas, hit = _stream(tok, TEXT, stop=("\n\nThe",))
    assert hit and "".join(deltas) == "naïve café 日本語 🙂 crème brûlée"


def test_held_back_prefix_is_released_when_no_stop_follows():
    tok = build_tokenizer()
    deltas, hit = _stream(tok, TEXT, stop=("brûlée!",))
    assert not hit and "".join(deltas) == TEXT


def test_earliest_of_several_stop_strings_wins():
    tok = build_tokenizer()
    deltas, hit = _stream(tok, TEXT, stop=("answer", "café"))
    assert hit and "".join(deltas) == "naïve "

"""Every OpenAI field a harness or SDK sends is honoured or refused with a 400 naming it: logprobs and
echo, n and prompt lists, token-id prompts, logits controls, roles, tokenizer endpoints and error
objects, with the real `openai` client against the HTTP API over the in-process front end."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from serving import openai_client

PROMPT = "Natalia sold clips to 48 of her friends"
MODEL = "tiny-pair"
GREEDY = {"temperature": 0, "extra_body": {"rstitch": {"policy": "rstitch", "threshold": 0.5}}}


@pytest.fixture(scope="module")
def http(local_http) -> str:
    return local_http[0]


@pytest.fixture(scope="module")
def oai(http):
    with openai_client(http) as client:
        yield client


def call(http: str, path: str, body=None, method: str | None = None, content_type="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if data is not None else {}
    request = urllib.request.Request(f"{http}{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_echo_with_logprobs_gives_the_llms_prompt_logprobs_then_the_generated_token(oai, engine):
    ids = engine.encode(PROMPT)
    got = oai.completions.create(model=MODEL, prompt=ids, max_tokens=1, logprobs=1, echo=True, temperature=0)
    lp = got.choices[0].logprobs
    want = engine.prompt_logprobs(ids, top=1)
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx([w[0] for w in want[1:]], abs=1e-4)
    assert got.choices[0].text.startswith(engine.tokenizer.decode(ids)) and got.usage.prompt_tokens == len(ids)
    assert lp.tokens[:len(ids)] == [engine.tokenizer.decode([t]) for t in ids]
    for token_lp, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert max(top.values()) >= token_lp - 1e-6 and 1 <= len(top) <= 2  # the best alternative, and the token
    text = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, echo=True, temperature=0)
    assert text.choices[0].text.startswith(PROMPT) and text.choices[0].logprobs is None


def test_chat_logprobs_whole_and_streamed_are_the_llms_under_verified(oai):
    messages = [{"role": "user", "content": PROMPT}]
    body = dict(model=MODEL, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    whole = oai.chat.completions.create(**body, extra_body={"rstitch": {"policy": "verified", "threshold": 0.5}})
    llm = oai.chat.completions.create(**body, extra_body={"rstitch": {"policy": "llm"}})
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert [c.logprob for c in content] == pytest.approx([c.logprob for c in llm.choices[0].logprobs.content], abs=1e-4)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].token == c.token for c in content)  # greedy
    chunks = list(oai.chat.completions.create(**body, stream=True, extra_body={"rstitch": {"policy": "llm"}}))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in llm.choices[0].logprobs.content])
    plain = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_n_prompt_lists_and_token_id_prompts(oai, engine):
    same = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=2, **GREEDY)
    assert [c.index for c in same.choices] == [0, 1] and same.choices[0].text == same.choices[1].text
    assert same.usage.completion_tokens == 2 * len(same.choices[0].model_extra["rstitch"]["token_ids"])
    ids = engine.encode("def add(a, b):")
    batch = oai.completions.create(model=MODEL, prompt=[PROMPT, "def add(a, b):"], max_tokens=6, **GREEDY)
    by_ids = oai.completions.create(model=MODEL, prompt=[engine.encode(PROMPT), ids], max_tokens=6, **GREEDY)
    assert [c.text for c in batch.choices] == [c.text for c in by_ids.choices]
    assert batch.choices[1].text == oai.completions.create(model=MODEL, prompt=ids, max_tokens=6, **GREEDY).choices[0].text
    seeded = dict(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, temperature=1.0, seed=11)
    first, again = (oai.completions.create(**seeded) for _ in range(2))
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeds derived from seed
    chunks = list(oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, n=2, stream=True,
                                         stream_options={"include_usage": True}, **GREEDY))
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in (0, 1)}
    assert texts == {0: same.choices[0].text, 1: same.choices[0].text}
    assert chunks[-1].usage.completion_tokens == same.usage.completion_tokens


def test_sampling_controls_are_honoured_and_verified_still_equals_llm(oai, engine):
    forced = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logit_bias={"42": 100}, **GREEDY)
    assert forced.model_extra["rstitch"]["token_ids"] == [42] * 4
    eos = min(engine.llm.eos_token_ids)
    held = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                  logit_bias={str(eos): 100}, extra_body={"min_tokens": 2})
    assert held.model_extra["rstitch"]["token_ids"][2] == eos and held.choices[0].finish_reason == "stop"
    going = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                   logit_bias={str(eos): 100}, extra_body={"ignore_eos": True})
    assert going.model_extra["rstitch"]["token_ids"] == [eos] * 3 and going.choices[0].finish_reason == "length"
    controls = dict(presence_penalty=1.2, frequency_penalty=0.6, logit_bias={"5": 4, "9": -100})
    runs = {policy: oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, **controls,
                                           extra_body={"repetition_penalty": 1.4, "min_p": 0.1,
                                                       "rstitch": {"policy": policy, "threshold": 0.6}})
            for policy in ("llm", "verified")}
    plain = oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0,
                                   extra_body={"rstitch": {"policy": "llm"}})
    ids = {p: r.model_extra["rstitch"]["token_ids"] for p, r in runs.items()}
    assert ids["verified"] == ids["llm"] != plain.model_extra["rstitch"]["token_ids"] and 9 not in ids["llm"]


def test_developer_is_the_system_role(oai):
    def prompt_tokens(messages):
        return oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=1).usage.prompt_tokens

    user = [{"role": "user", "content": PROMPT}]
    with_developer = prompt_tokens([{"role": "developer", "content": "Be brief."}] + user)
    assert with_developer == prompt_tokens([{"role": "system", "content": "Be brief."}] + user) > prompt_tokens(user)


@pytest.mark.parametrize("path, fields, param, message", [
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "no tool calling"),
    ("chat", {"tool_choice": "auto"}, "tool_choice", "not supported"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format",
     "no JSON mode or schema"),
    ("chat", {"logprobs": True, "top_logprobs": 50}, "top_logprobs", "top_logprobs must be an integer in [0, 20], got 50"),
    ("chat", {"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs: true"),
    ("chat", {"echo": True}, "echo", "echo applies to /v1/completions only"),
    ("chat", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "must be one of system, developer"),
    ("chat", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "got 'wizard'"),
    ("chat", {"n": 17}, "n", "n must be an integer in [1, 16], got 17"),
    ("chat", {"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be a number in [-2, 2], got 2.5"),
    ("chat", {"repetition_penalty": 0}, "repetition_penalty", "repetition_penalty must be a number in (0, 2]"),
    ("chat", {"min_p": -0.1}, "min_p", "min_p must be a number in [0, 1]"),
    ("chat", {"min_tokens": 9}, "min_tokens", "min_tokens must be an integer in [0, max_new_tokens = 4], got 9"),
    ("chat", {"ignore_eos": "yes"}, "ignore_eos", "ignore_eos must be true or false"),
    ("chat", {"logit_bias": {"x": 1}}, "logit_bias", "logit_bias keys must be token ids in [0, "),
    ("chat", {"logit_bias": {"1": 500}}, "logit_bias", "numbers in [-100, 100], got (1, 500)"),
    ("completions", {"logprobs": 21}, "logprobs", "logprobs must be an integer in [0, 20], got 21"),
    ("completions", {"suffix": "end"}, "suffix", "no insertion"),
    ("completions", {"best_of": 3}, "best_of", "best_of must equal n"),
    ("completions", {"top_logprobs": 2}, "top_logprobs", "applies to /v1/chat/completions only"),
    ("completions", {"prompt": [1, 2, -3]}, "prompt", "must be a string, a list of token ids"),
    ("completions", {"prompt": [[1, 2], 5]}, "prompt[1]", "prompt[1] must be a string"),
    ("completions", {"prompt": [1, 10**9]}, "prompt", "prompt token id 1000000000 is outside the vocabulary"),
])
def test_refused_and_bad_fields_are_400_naming_the_field(http, path, fields, param, message):
    body = ({"messages": [{"role": "user", "content": "hi"}]} if path == "chat" else {"prompt": "hi"})
    status, answer = call(http, f"/v1/{'chat/' if path == 'chat' else ''}completions", {**body, "max_tokens": 4, **fields})
    assert status == 400, answer
    assert answer["error"]["param"] == param and message in answer["error"]["message"], answer


def test_tokenizer_endpoints_and_the_model_card(http, engine):
    status, tokens = call(http, "/tokenize", {"prompt": PROMPT})
    assert status == 200 and tokens["tokens"] == engine.encode(PROMPT) and tokens["count"] == len(tokens["tokens"])
    assert tokens["max_model_len"] == engine.max_context
    chat = call(http, "/tokenize", {"messages": [{"role": "developer", "content": "x"}]})[1]["tokens"]
    assert chat == engine.encode(messages=[{"role": "system", "content": "x"}])
    assert call(http, "/detokenize", {"tokens": tokens["tokens"]})[1] == {"prompt": engine.tokenizer.decode(tokens["tokens"])}
    status, info = call(http, "/tokenizer_info")
    assert status == 200 and info["eos_token"] == engine.tokenizer.eos_token and info["chat_template"]
    assert call(http, "/detokenize", {"tokens": [-1]})[1]["error"]["param"] == "tokens"
    assert call(http, f"/v1/models/{MODEL}")[1]["id"] == MODEL


def test_framework_errors_are_openai_error_objects(http, oai):
    status, body = call(http, "/v1/models/gpt-4o")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")
    status, body = call(http, "/v1/embeddings", {"input": "x"})
    assert status == 404 and "no route POST /v1/embeddings" in body["error"]["message"]
    status, body = call(http, "/v1/completions", method="GET")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = call(http, "/v1/completions", b"prompt=hi", content_type="application/x-www-form-urlencoded")
    assert status == 415 and body["error"]["type"] == "invalid_request_error"

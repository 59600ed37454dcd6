"""lm-eval itself against the OpenAI API, unpatched: `local-completions` on a loglikelihood (multiple
choice) task through echo + logprobs and the server's /tokenize endpoints, `local-chat-completions`
on a generation task. Task data are written here; nothing is downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import math
import os

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'rstitch[test]')")

MC = [{"question": "2 + 2 =", "choices": [" 4", " five", " 22"], "answer": 0},
      {"question": "The sky is", "choices": [" blue", " made of cheese"], "answer": 0},
      {"question": "def add(a, b):", "choices": [" return a + b", " pass"], "answer": 0}]
GEN = [{"question": "What is 3 + 4?", "answer": "7"}, {"question": "Name a colour.", "answer": "red"}]


def _task(root, name: str, rows: list[dict], body: str) -> None:
    data = root / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                       f"    test: {data}\ntest_split: test\n{body}")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    _task(root, "rstitch_mc", MC, "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
          "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\nmetric_list:\n  - metric: acc\n")
    _task(root, "rstitch_gen", GEN, "output_type: generate_until\ndoc_to_text: \"{{question}}\"\n"
          "doc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 6\n"
          "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(root))


def test_lm_eval_loglikelihood_task_through_local_completions(local_http, tasks):
    http, _ = local_http
    out = lm_eval.simple_evaluate(model="local-completions", tasks=["rstitch_mc"], task_manager=tasks,
                                  model_args=f"model=tiny-pair,base_url={http}/v1/completions,num_concurrent=1,"
                                             f"max_retries=1,tokenized_requests=True",
                                  log_samples=True, batch_size=1)
    assert 0 <= out["results"]["rstitch_mc"]["acc,none"] <= 1
    samples = out["samples"]["rstitch_mc"]
    assert len(samples) == len(MC)
    for sample in samples:
        lls = [resp[0][0] for resp in sample["resps"]]
        assert all(math.isfinite(ll) and ll < 0 for ll in lls) and len(set(lls)) == len(lls), lls


def test_lm_eval_generation_task_through_local_chat_completions(local_http, tasks):
    http, _ = local_http
    out = lm_eval.simple_evaluate(model="local-chat-completions", tasks=["rstitch_gen"], task_manager=tasks,
                                  model_args=f"model=tiny-pair,base_url={http}/v1/chat/completions,num_concurrent=1,"
                                             f"max_retries=1", apply_chat_template=True, log_samples=True)
    assert 0 <= out["results"]["rstitch_gen"]["exact_match,none"] <= 1
    samples = out["samples"]["rstitch_gen"]
    assert len(samples) == len(GEN) and all(isinstance(s["resps"][0][0], str) for s in samples)

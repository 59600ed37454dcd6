"""How often llama.cpp's batch-shape-dependent arithmetic changes a greedy token, on the real pair.

llama.cpp sums in an order that depends on the shape of a pass: a token's logits from a multi-token
pass (a verification of drafts, a partial prefill) or from a pass batched with other sessions' rows
differ slightly from the same token's logits fed one by one. Exact acceptance compares argmaxes, so
where two candidates nearly tie, `verified`/`speculative` may keep another token than LLM-only would.
This measures, on the LLM of the pair:

  positions   greedy text written one token per pass, then the same tokens fed again as 9-token
              verify-style passes and as rows of a 4-sequence batch: the share of positions whose
              argmax differs from the one-by-one pass, and the largest logit difference;
  end to end  `verified` and `speculative` with a fixed draft limit (drafts forced, cost profile
              off) against LLM-only: identical texts, and where the first difference falls.

    python benchmarks/llamacpp_numerics.py                    # the embedded default pair
    python benchmarks/llamacpp_numerics.py --prompts 8 --max-new-tokens 128 --json numerics.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number iteratively, and explain it.",
    "A train travels 60 km in 45 minutes. At the same speed, how far does it travel in 2 hours?",
    "Explain what a hash table is and how collisions are resolved, in a few paragraphs.",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?",
    "Write a SQL query that lists the five customers with the highest total order value.",
    "Describe the difference between a process and a thread.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slm"), p.add_argument("--llm")
    p.add_argument("--prompts", type=int, default=len(PROMPTS))
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--draft-tokens", type=int, default=4)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    from rstitch_core import Engine

    if args.slm is None:
        from rstitch_core.assets import ensure_default_pair

        args.slm, args.llm = map(str, ensure_default_pair(backend="llamacpp"))
    engine = Engine.load(args.slm, args.llm, backend="llamacpp")
    prompts = [engine.encode(messages=[{"role": "user", "content": t}]) for t in PROMPTS[:args.prompts]]
    figures = {"positions": positions(engine.llm, prompts, args.max_new_tokens),
               "end_to_end": end_to_end(engine, prompts, args)}
    report(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def greedy_one_by_one(llm, ids: list[int], n: int):
    """Greedy tokens and each one's logits row, every token fed in a pass of its own."""
    cache, rows, tokens = llm.new_cache(), [], []
    logits = llm.forward(cache, ids).logits[-1]
    for _ in range(n):
        rows.append(logits)
        tokens.append(int(logits.argmax()))
        if tokens[-1] in llm.eos_token_ids:
            break
        logits = llm.forward(cache, [tokens[-1]]).logits[-1]
    llm.release(cache)
    return tokens, rows


def positions(llm, prompts: list[list[int]], n: int) -> dict:
    from rstitch_core.models.backend import PassRequest

    texts = [greedy_one_by_one(llm, ids, n) for ids in prompts]
    out = {"positions": 0, "verify_argmax_differs": 0, "batched_argmax_differs": 0,
           "verify_max_abs_diff": 0.0, "batched_max_abs_diff": 0.0}
    for ids, (tokens, rows) in zip(prompts, texts):
        # verify-style: the prompt, then the text in 9-token passes with every position's logits
        cache = llm.new_cache()
        got = [llm.forward(cache, ids).logits[-1]]
        for i in range(0, len(tokens) - 1, 9):
            got.extend(llm.forward(cache, tokens[i:i + 9], num_logits=len(tokens[i:i + 9])).logits)
        llm.release(cache)
        for want, have in zip(rows, got):
            out["positions"] += 1
            out["verify_argmax_differs"] += int(want.argmax() != have.argmax())
            out["verify_max_abs_diff"] = max(out["verify_max_abs_diff"], float((want - have).abs().max()))
    # batched: four prompts at once, every step one llama_decode over four rows
    for group in range(0, len(prompts) - 3, 4):
        batch = list(range(group, group + 4))
        caches = [llm.new_cache() for _ in batch]
        got = llm.run([PassRequest(c, prompts[b]) for c, b in zip(caches, batch)])
        steps = min(len(texts[b][0]) for b in batch)
        for t in range(steps):
            for (logits, _), b in zip(got, batch):
                want = texts[b][1][t]
                out["batched_argmax_differs"] += int(want.argmax() != logits[-1].argmax())
                out["batched_max_abs_diff"] = max(out["batched_max_abs_diff"], float((want - logits[-1]).abs().max()))
            if t + 1 < steps:
                got = llm.run([PassRequest(c, [texts[b][0][t]]) for c, b in zip(caches, batch)])
        out.setdefault("batched_positions", 0)
        out["batched_positions"] += steps * 4
        for c in caches:
            llm.release(c)
    return out


def end_to_end(engine, prompts: list[list[int]], args) -> dict:
    from rstitch_core import Generation, RoutingParams, SamplingParams

    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    out = {}
    llm = [Generation.collect(engine.generate(prompt_ids=ids, sampling=sampling, routing=RoutingParams(policy="llm")))
           for ids in prompts]
    for policy in ("verified", "speculative"):
        routing = RoutingParams(policy=policy, threshold=0.1, draft_tokens=args.draft_tokens)
        runs = [Generation.collect(engine.generate(prompt_ids=ids, sampling=sampling, routing=routing)) for ids in prompts]
        firsts = [next((i for i, (a, b) in enumerate(zip(r.token_ids, w.token_ids)) if a != b), None)
                  for r, w in zip(runs, llm)]
        out[policy] = {"identical": sum(r.token_ids == w.token_ids for r, w in zip(runs, llm)), "runs": len(runs),
                       "first_difference_at": firsts,
                       "drafted_tokens": sum(r.stats.drafted_tokens for r in runs),
                       "accepted_tokens": sum(r.stats.accepted_tokens for r in runs)}
    return out


def report(f: dict, args) -> None:
    from rstitch_core.models.loading import cpuinfo_field

    p = f["positions"]
    print(f"CPU: {cpuinfo_field('model name')}; LLM {Path(args.llm).name}; greedy, {args.max_new_tokens} tokens max")
    print(f"9-token verify passes vs one token per pass: argmax differs at {p['verify_argmax_differs']} of "
          f"{p['positions']} positions ({p['verify_argmax_differs'] / max(1, p['positions']):.2%}); "
          f"largest logit difference {p['verify_max_abs_diff']:.4f}")
    if p.get("batched_positions"):
        print(f"rows of a 4-sequence batch vs one sequence per pass: argmax differs at {p['batched_argmax_differs']} "
              f"of {p['batched_positions']} positions ({p['batched_argmax_differs'] / p['batched_positions']:.2%}); "
              f"largest logit difference {p['batched_max_abs_diff']:.4f}")
    for policy, e in f["end_to_end"].items():
        print(f"{policy} (k = {args.draft_tokens}, drafts forced, exact) vs llm: identical text in {e['identical']} of "
              f"{e['runs']} prompts; first difference at token {e['first_difference_at']}; "
              f"accepted {e['accepted_tokens']} of {e['drafted_tokens']} drafts")


if __name__ == "__main__":
    sys.exit(main())

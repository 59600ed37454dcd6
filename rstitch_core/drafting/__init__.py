"""Cost-aware drafting: how long each draft should be, priced on this machine's measured passes.

  cost.py        the one cost model: PassCost.seconds(n, kv, b, logits), fitted by fit_pass_cost
  profiling.py   times the pair's passes (single, batched, prefill) and fits both models
  profile.py     CostProfile: the fits saved under the key they were measured on (shapes, dtype, CPU/GPU)
  control.py     per round: expected tokens per second of each draft limit, the acceptance estimate
  windows.py     per load level: whether drafting or plain decoding measured faster (served)
  cost_aware.py  CostAwareControl, the policy loop's DraftControl built from the above
"""

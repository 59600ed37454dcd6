"""A factory for per-problem records shaped like the runner's."""


def record(problem_id, config, correct, latency, generated=10, llm_tokens=0, switches=0, finish="eos"):
    policy, _, tau = config.partition("@")
    return {"problem_id": problem_id, "config": config, "policy": policy, "threshold": float(tau) if tau else None,
            "correct": correct, "latency_s": latency, "generated_tokens": generated, "llm_tokens": llm_tokens,
            "slm_tokens": generated - llm_tokens, "switches": switches, "finish_reason": finish}

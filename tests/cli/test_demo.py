"""`rstitch demo` (the main job) end to end on the tiny pair: a real local service, a real GSM8K item."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_streams_a_gsm8k_problem_through_the_served_system(pair_dirs):
    from rstitch_eval.gsm8k import load_gsm8k

    load_gsm8k()  # fetched (pip) into the cache on a fresh machine, before the timed part
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "rstitch_cli.main", "demo", "--slm", str(pair_dirs[0]),
                           "--llm", str(pair_dirs[1]), "--dtype", "float32", "--problem", "3",
                           "--max-new-tokens", "12", "--threshold", "0.5"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GSM8K problem 3:" in proc.stdout
    assert "| gold: " in proc.stdout.strip().splitlines()[-1]
    assert "tokens (slm" in proc.stderr  # the summary line of the stream

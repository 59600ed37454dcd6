"""A short run of benchmarks/load_test.py: concurrent clients with random disconnects and deadlines."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_short_load_run_loses_nothing_and_leaks_nothing(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_test.py"), "--clients", "6",
                           "--duration", "10", "--max-new-tokens", "24", "--json", str(out),
                           "--cancel-bursts", "1", "--release-limit", "4"],  # test_disconnects says why 4
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.exists(), proc.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["failures"] == 0, figures["failure_examples"]
    assert figures["completed"] >= 3 and figures["requests"] >= figures["completed"]
    assert figures["sessions_after"] == 0
    assert figures["worker_rss_mb_after"] < 1.5 * figures["worker_rss_mb_before"]
    assert proc.returncode == 0

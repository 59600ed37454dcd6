"""`rstitch serve`'s local service frees every port it opened when it stops, so a restart on the
same ports works at once (Ray's agents used to hold the metrics port for about a minute)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter, as `rstitch serve` does: start the service on free ports, serve one
# request, stop, then report what is left of the cluster and which ports can be bound again.
SCRIPT = """
import json, socket, sys
import psutil
from rstitch_cli.serve import local_service
from services.client import RStitchClient
from rstitch_core import SamplingParams

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def bindable(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False

slm, llm = sys.argv[1:3]
ports = {"grpc": free_port(), "metrics": free_port(), "http": free_port()}
args = {"slm": slm, "llm": llm, "dtype": "float32", "slm_num_cpus": 0.4, "llm_num_cpus": 0.4}
with local_service(args, ports["grpc"], ports["metrics"], 2, http_port=ports["http"], quiet=True) as address:
    with RStitchClient(address) as client:
        assert client.generate_result(prompt="hi", sampling=SamplingParams(max_new_tokens=2))["token_ids"]
    held = {name: not bindable(port) for name, port in ports.items()}
left = [" ".join(p.cmdline()[:2]) for p in psutil.Process().children(recursive=True)]
print(json.dumps({"held_while_serving": held, "bindable_after": {n: bindable(p) for n, p in ports.items()},
                  "processes_left": left}))
"""


def test_a_stopped_service_leaves_no_process_and_no_port_behind(pair_dirs):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(pair_dirs[0]), str(pair_dirs[1])],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["held_while_serving"] == {"grpc": True, "metrics": True, "http": True}  # the check can fail
    assert report["processes_left"] == []
    assert report["bindable_after"] == {"grpc": True, "metrics": True, "http": True}

"""deploy/serve_config.yaml, pointed at tiny local models, run by Ray's own `serve run` CLI in a
fresh local cluster, answers a streamed gRPC request; tau comes from the Serve args."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from .kube import ROOT, SERVE_CONFIG

READY_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid`: the `serve run` process and the Ray cluster it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def stop(proc: subprocess.Popen) -> list[int]:
    """Ctrl-C for `serve run` (it shuts Serve and its cluster down), then SIGKILL for anything of
    this session still alive. Returns the pids that had to be killed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 5
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftover = session_pids(proc.pid)
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously: wait for the exits
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return leftover


@pytest.fixture(scope="module")
def served(pair_dirs, tmp_path_factory):
    """(gRPC address, log path) of `serve run` on a copy of deploy/serve_config.yaml."""
    tmp = tmp_path_factory.mktemp("serve_run")
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    grpc_port = free_port()
    config["grpc_options"]["port"] = grpc_port
    config["http_options"]["port"] = free_port()
    (app,) = config["applications"]
    app["args"].update(slm=str(pair_dirs[0]), llm=str(pair_dirs[1]), dtype="float32", slm_num_cpus=0.4,
                       llm_num_cpus=0.4, frontend_num_cpus=0.1, threads=1,
                       default_threshold=1.0)  # requests without a threshold: SLM only
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).with_name("serve")
    assert serve_cli.is_file(), f"Ray's `serve` CLI is not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    log = tmp / "serve_run.log"
    with open(log, "wb") as out:
        # A session of its own: every process of this cluster can be found (and ended) by it.
        # `--address local` starts a new cluster even if another one runs on this machine.
        proc = subprocess.Popen([str(serve_cli), "run", "--address", "local", str(path)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"127.0.0.1:{grpc_port}", proc, log
    finally:
        killed = stop(proc)
        assert not session_pids(proc.pid), "Ray processes of the `serve run` cluster are still alive"
        if killed:  # a slow shutdown (loaded machine) is not this test's failure; what is left is ended
            warnings.warn(f"`serve run` was still shutting down after Ctrl-C; killed pids {killed}")


def log_tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


def wait_until_served(address: str, proc: subprocess.Popen, log: Path) -> None:
    import grpc

    from rstitch_core import SamplingParams
    from services.client import RStitchClient

    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    with RStitchClient(address) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"`serve run` exited with {proc.returncode}:\n{log_tail(log)}"
            try:
                client.generate_result(prompt="ping", sampling=SamplingParams(max_new_tokens=1), timeout=10)
                return
            except grpc.RpcError as err:  # UNAVAILABLE / NOT_FOUND until the app is up
                last = f"{err.code().name}: {err.details()}"
                time.sleep(0.5)
    pytest.fail(f"no gRPC answer in {READY_TIMEOUT_S} s (last: {last}):\n{log_tail(log)}")


def test_serve_run_of_the_deploy_config_streams_a_generation(served):
    import grpc

    from rstitch.v1 import rstitch_pb2 as pb
    from rstitch.v1 import rstitch_pb2_grpc
    from rstitch_core import RoutingParams, SamplingParams
    from services.client import RStitchClient

    address, proc, log = served
    wait_until_served(address, proc, log)
    with RStitchClient(address, timeout=60) as client:
        # tau = 0 sent explicitly: the LLM writes every token (it is never confident enough to hand back).
        responses = list(client.generate(prompt="The quick brown fox", sampling=SamplingParams(max_new_tokens=12),
                                         routing=RoutingParams(policy="rstitch", threshold=0.0)))
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[-1] == "finish" and kinds.count("finish") == 1 and "tokens" in kinds
    tokens = [t for r in responses if r.HasField("tokens") for t in r.tokens.sources]
    assert len(tokens) == responses[-1].finish.usage.generated_tokens > 0
    assert set(tokens) == {pb.MODEL_LLM}
    # No threshold in the request: the Serve arg default_threshold (1.0 here) applies, so under
    # rstitch the SLM, whose entropy never exceeds 1, keeps every token.
    with grpc.insecure_channel(address) as channel:
        stub = rstitch_pb2_grpc.RStitchStub(channel)
        request = pb.GenerateRequest(prompt="The quick brown fox", sampling=pb.SamplingParams(max_new_tokens=12),
                                     routing=pb.RoutingParams(policy=pb.POLICY_RSTITCH))
        responses = list(stub.Generate(request, timeout=60))
    sources = [s for r in responses if r.HasField("tokens") for s in r.tokens.sources]
    assert responses[-1].HasField("finish") and sources and set(sources) == {pb.MODEL_SLM}

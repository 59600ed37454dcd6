"""`rstitch serve` as an operator stops it: SIGTERM (Kubernetes, systemd) or SIGINT sent with `kill`
(not from a terminal) drains the streams in flight, then every process it started has exited and
every port is free when it returns; a second signal stops it at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil

from rstitch.v1 import rstitch_pb2 as pb
from rstitch.v1 import rstitch_pb2_grpc
from rstitch_cli.serve import is_loopback
from serving import HOLD_PROMPT, HOLD_TOKENS, free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


class Served:
    """`rstitch serve` on the tiny pair in a subprocess, on free ports, its output followed line by line."""

    def __init__(self, pair_dirs, *flags: str):
        self.ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "rstitch_cli.main", "serve", "--slm", str(pair_dirs[0]), "--llm",
               str(pair_dirs[1]), "--backend", "torch", "--dtype", "float32", "--cost-profile", "off",
               "--num-cpus", "2", "--port", str(self.ports["grpc"]), "--http-port", str(self.ports["http"]),
               "--metrics-port", str(self.ports["metrics"]), *flags]
        # Started in the background as a shell would: SIGINT ignored (the case `kill -INT` once missed).
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        self.lines: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._follow, daemon=True).start()
        self.wait_for("rstitch: serving", START_TIMEOUT_S)
        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        self.address = f"localhost:{self.ports['grpc']}"  # the address it prints

    def _follow(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip())
                self.changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        with self.changed:
            found = self.changed.wait_for(lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                                          timeout)
        assert found and any(text in line for line in self.lines), "\n".join(self.lines[-40:])

    def left(self) -> list[str]:
        """The processes it started that still run (a zombie has exited)."""
        alive = []
        for p in self.children:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(" ".join(p.cmdline()[:2]))
            except psutil.NoSuchProcess:
                pass
        return alive


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


class Stream:
    """One gRPC Generate stream read on a thread: `first` is set at its first token; `outcome` is
    ("finished", token count) or (status code, details)."""

    def __init__(self, address: str, max_new_tokens: int):
        self.first, self.done = threading.Event(), threading.Event()
        self.max_new_tokens, self.tokens, self.outcome = max_new_tokens, 0, None
        self.channel = grpc.insecure_channel(address)
        stub = rstitch_pb2_grpc.RStitchStub(self.channel)
        request = pb.GenerateRequest(prompt=HOLD_PROMPT, sampling=pb.SamplingParams(max_new_tokens=max_new_tokens))
        threading.Thread(target=self._read, args=(stub.Generate(request),), daemon=True).start()

    def _read(self, responses) -> None:
        try:
            for response in responses:
                if response.HasField("tokens"):
                    self.tokens += len(response.tokens.token_ids)
                    self.first.set()
                if response.HasField("finish"):
                    self.outcome = ("finished", self.tokens)
        except grpc.RpcError as err:
            self.outcome = (err.code(), err.details())
        finally:
            self.first.set()
            self.done.set()
            self.channel.close()


def _own_address() -> str | None:
    """This machine's address on its network (no packet is sent), None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def listening(served: Served) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of `rstitch serve` and its children."""
    root = psutil.Process(served.proc.pid)
    sockets = []
    for proc in (root, *root.children(recursive=True)):
        try:
            sockets += [(c.laddr.ip, c.laddr.port, proc.name()) for c in proc.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    return sockets


def assert_served_to_this_machine_only(served: Served) -> None:
    """By default every socket of the service, Ray's own and the metrics exporter's included, listens
    on loopback only, but one: each Serve replica's server for calls between deployments, which Ray
    2.60 binds on every interface (`[::]:0` in ray/serve/_private/replica.py; Ray's token guards it);
    from this machine's network address neither API nor the metrics can be reached."""
    sockets = listening(served)
    print("\nlistening by default:", sorted({(ip, name) for ip, _, name in sockets}))
    assert {served.ports["grpc"], served.ports["http"], served.ports["metrics"]} <= {port for _, port, _ in sockets}
    exposed = [(ip, name) for ip, _, name in sockets if not is_loopback(ip)]
    replicas = {name for _, name in exposed if name.startswith("ray::ServeReplica:")}
    assert sorted(exposed) == sorted(("::", name) for name in replicas) and len(replicas) == 3, sockets
    address = _own_address()
    if address is None:
        return
    for port in served.ports.values():
        with socket.socket() as s:
            assert s.connect_ex((address, port)) != 0, port


def test_sigterm_drains_streams_in_flight_then_leaves_no_process_and_no_port(pair_dirs):
    served = Served(pair_dirs, "--grace-period", "6")
    assert_served_to_this_machine_only(served)
    short = [Stream(served.address, 24) for _ in range(2)]
    held = Stream(served.address, HOLD_TOKENS)  # still running at the end of the grace: cut
    for stream in (*short, held):
        assert stream.first.wait(60)
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(90) == 0, "\n".join(served.lines[-40:])
    stopped = time.monotonic() - signalled
    for stream in (*short, held):
        assert stream.done.wait(10)
    assert [s.outcome for s in short] == [("finished", 24)] * 2  # whole outputs, though signalled mid-stream
    assert held.outcome[0] in (grpc.StatusCode.UNAVAILABLE, "finished"), held.outcome
    if held.outcome[0] == grpc.StatusCode.UNAVAILABLE:
        assert "shut down before this request finished" in held.outcome[1] or held.tokens
    assert served.left() == [], served.left()
    assert {name: bindable(port) for name, port in served.ports.items()} == dict.fromkeys(served.ports, True)
    text = "\n".join(served.lines)
    assert "SIGTERM: draining" in text and "stopped, every process ended" in text, text[-3000:]
    assert stopped < 6 + 60, stopped  # the grace, then the shutdown itself
    print("\n".join(line for line in served.lines if "rstitch:" in line), f"\nexited {stopped:.1f} s after SIGTERM")


def test_a_second_sigint_stops_at_once(pair_dirs):
    served = Served(pair_dirs, "--grace-period", "600", "--host", "0.0.0.0")
    address = _own_address()
    if address is not None:  # --host 0.0.0.0 serves the network on purpose: the APIs answer there
        with socket.socket() as s:
            assert s.connect_ex((address, served.ports["http"])) == 0
        served.address = f"{address}:{served.ports['grpc']}"
    held = Stream(served.address, HOLD_TOKENS)
    assert held.first.wait(60)
    served.proc.send_signal(signal.SIGINT)  # ignored by inheritance: rstitch serve takes it anyway
    served.wait_for("SIGINT: draining", 30)
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(60) == 128 + signal.SIGINT
    stopped = time.monotonic() - signalled
    print(f"\nexited {stopped:.1f} s after the second SIGINT")
    assert stopped < 30  # not the 600 s grace
    assert served.left() == []
    assert held.done.wait(30) and held.outcome[0] == grpc.StatusCode.UNAVAILABLE

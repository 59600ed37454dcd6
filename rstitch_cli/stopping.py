"""How `rstitch serve` stops: SIGTERM or SIGINT (a terminal's Ctrl-C, `kill`, Kubernetes, systemd)
asks for a graceful stop (drain, then every process the service started is ended); a second
one stops everything at once.

Signals are seen through a wakeup fd read by a thread of its own, not by the main thread's Python
handler: the main thread may sit for seconds inside Ray's C++ calls (serve.shutdown), where a
Python handler would not run, and a second signal must act then too. Handlers are installed
explicitly because a process started in the background inherits SIGINT ignored, and after
ray.init, whose own SIGTERM handler exits the driver in the middle of a shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopper:
    """Watches SIGTERM/SIGINT: `requested` is set by the first, the second kills every descendant
    process and exits (status 128 + signal number) without waiting for anything."""

    def __init__(self):
        self.requested = threading.Event()
        self.signal_name: str | None = None
        self.at: float | None = None  # monotonic time of the first signal
        self.processes: list = []  # the descendants when the stop began: some outlive their parent
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(True)
        self._writer.setblocking(False)

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (call from the main thread, after ray.init)."""
        for sig in SIGNALS:
            signal.signal(sig, _noop)  # the C-level handler then writes the number to the wakeup fd
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="rstitch-signals", daemon=True).start()

    def wait(self) -> None:
        """Block until a stop is requested (by a signal, or `request`)."""
        while not self.requested.wait(1.0):
            pass

    def request(self, name: str) -> None:
        """Ask for a graceful stop, as the first signal does."""
        if not self.requested.is_set():
            import psutil

            self.signal_name, self.at = name, time.monotonic()
            self.processes = psutil.Process().children(recursive=True)
            self.requested.set()

    def _watch(self) -> None:
        while True:
            data = self._reader.recv(64)
            for number in data:
                if number not in SIGNALS:
                    continue
                name = signal.Signals(number).name
                if not self.requested.is_set():
                    say(f"{name}: draining the requests in flight, then stopping ({name} again: stop at once)")
                    self.request(name)
                else:
                    say(f"{name} again: stopping at once")
                    kill_descendants(self.processes)
                    os._exit(128 + number)


def _noop(signum, frame) -> None:
    pass


def kill_descendants(known: list = ()) -> None:
    """SIGKILL every process this one started, however deep (Ray's raylet, GCS, agents, workers),
    and those of `known` that are still running (an agent whose raylet is gone has PID 1 as parent)."""
    import psutil

    children = list({*known, *psutil.Process().children(recursive=True)})
    for proc in children:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=5)


def say(message: str) -> None:
    """A line of the stop's timeline on stderr."""
    print(f"rstitch: {message}", file=sys.stderr, flush=True)

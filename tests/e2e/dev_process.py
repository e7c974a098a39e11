"""``edgewise dev`` as a real process for the end-to-end tests: started on a free port, its output
collected line by line, stopped with a signal. Imported by name (pyproject's pytest ``pythonpath``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20.0


def edgewise_command() -> list[str]:
    script = Path(sys.executable).with_name("edgewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wrangler_like_cli.main"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A free port whose successor is free too (``--pop-ports`` numbers PoPs consecutively)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A CLI subprocess whose stdout and stderr lines are collected by reader threads."""

    def __init__(self, args: list[str], cwd: Path = ROOT) -> None:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
        self.popen = subprocess.Popen([*edgewise_command(), *args], cwd=cwd, env=environment, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines: list[tuple[str, str]] = []  # (stream, line)
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                         for stream, name in ((self.popen.stdout, "stdout"), (self.popen.stderr, "stderr"))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, name: str) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append((name, line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(f"[{name}] {line}" for name, line in self.lines)

    def count(self, text: str, stream: str | None = None) -> int:
        with self._changed:
            return sum(text in line for name, line in self.lines if stream in (None, name))

    def wait_for(self, text: str, *, stream: str | None = None, times: int = 1, timeout_s: float = 10.0) -> bool:
        """Whether ``text`` has appeared ``times`` times within the timeout (False if the process exits first)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.count(text, stream) < times:
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not any(r.is_alive() for r in self._readers)):
                    return False
                self._changed.wait(min(left, 0.1))
            return True

    def wait(self, timeout_s: float) -> int:
        """The exit code, once the process has exited and its output is read."""
        returncode = self.popen.wait(timeout_s)
        for reader in self._readers:
            reader.join(timeout_s)
        return returncode

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 5.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                return self.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        return self.wait(timeout_s)


class DevServer(Process):
    def __init__(self, project: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["dev", str(project), "--port", str(self.port), "--latency", "off", "--log-level", "info",
                          *extra])
        ready = f"[wrangler:info] Ready on http://localhost:{self.port}"
        if not self.wait_for(ready, stream="stdout", timeout_s=STARTUP_TIMEOUT_S):
            self.stop(signal.SIGKILL)
            pytest.fail(f"edgewise dev did not get ready in {STARTUP_TIMEOUT_S} s:\n{self.output}")

    def get(self, path: str = "/", **kwargs: object) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

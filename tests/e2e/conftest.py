"""The AI end-to-end tests' shared pieces: `edgewise dev` with an `[ai]` binding as a real process, the
inference backend it starts (its URL read from dev's output, its token chosen here), and the greedy
reference text from an offline `LLM` on the same built-in model.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from dev_process import DevServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ROOT = Path(__file__).resolve().parents[2]
TINY_SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"
# edge_runtime.backend_process.DEV_TOKEN_ENV: the token dev gives the backend it starts
DEV_TOKEN_ENV = "EDGEWISE_DEV_BACKEND_TOKEN"
AI_READY_TIMEOUT_S = 120.0  # dev waits for the backend to load its models before it listens
STOP_TIMEOUT_S = 20.0
READY_LINE = re.compile(r"\[wrangler:info\] Ready on (http://\S+)")
BACKEND_LINE = re.compile(r"AI backend ready on (http://\S+)")

Messages = list[dict[str, str]]


class AiDevServer:
    """`edgewise dev DIRECTORY --port 0` whose config starts the local AI backend; `stop()` ends both."""

    def __init__(self, project: Path, *extra: str, token: str = "e2e-backend-token") -> None:
        self.token = token
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "COLUMNS": "200",
                       DEV_TOKEN_ENV: token}
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "wrangler_like_cli.main", "dev", str(project), "--port", "0", *extra],
            cwd=ROOT, env=environment, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name="edgewise-dev-output")
        self._reader.start()
        ready = self.wait_for_line(READY_LINE, AI_READY_TIMEOUT_S)
        backend = self.wait_for_line(BACKEND_LINE, 0.0)
        if ready is None or backend is None:
            self.stop()
            pytest.fail(f"edgewise dev did not get ready with its AI backend in {AI_READY_TIMEOUT_S:g} s:\n"
                        f"{self.output}")
        self.url = ready.group(1).replace("localhost", "127.0.0.1")
        self.backend_url = backend.group(1)
        self._backend_pids = _children_of(self.popen.pid)

    def _read(self) -> None:
        for line in self.popen.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str] | None:
        """The first output line matching `pattern`, waiting up to `timeout_s` (None if dev exits first)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                match = next(filter(None, map(pattern.search, self.lines)), None)
                if match is not None or time.monotonic() >= deadline or not self._reader.is_alive():
                    return match
                self._changed.wait(min(0.1, deadline - time.monotonic()))

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def backend_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def metric(self, name: str, model: str) -> float:
        """One series of the backend's /metrics (0 when absent)."""
        reply = httpx.get(f"{self.backend_url}/metrics", headers=self.backend_headers(), timeout=10)
        reply.raise_for_status()
        for line in reply.text.splitlines():
            if line.startswith(f"{name}{{") and f'model="{model}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for_metric(self, name: str, model: str, until: Callable[[float], bool], timeout_s: float = 10.0) -> float:
        """The series' value once `until(value)` holds, or its last value after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not until(value := self.metric(name, model)) and time.monotonic() < deadline:
            time.sleep(0.02)
        return value

    def stop(self) -> int | None:
        """Ctrl-C, which stops the backend too; SIGKILL for dev and its backend if that takes too long."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)
                self._kill_backend()  # dev died without stopping it
        self._reader.join(STOP_TIMEOUT_S)
        return self.popen.returncode


    def _kill_backend(self) -> None:
        for pid in getattr(self, "_backend_pids", []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the backend dev started), read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


@pytest.fixture(scope="module")
def start_ai_dev() -> Iterator[Callable[..., AiDevServer]]:
    """`start_ai_dev(project, *dev_args)`; every server started is stopped when the module ends."""
    servers: list[AiDevServer] = []

    def start(project: Path, *extra: str) -> AiDevServer:
        servers.append(AiDevServer(project, *extra))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def greedy() -> Callable[[Messages, int], str]:
    """`greedy(messages, max_tokens)`: tiny-shakespeare's temperature-0 answer, computed offline on the device
    and dtype the backend picks by default (`auto`: float32 on CPU)."""
    from gpu_backend import LLM, SamplingParams
    from gpu_backend.builtin_models import builtin_model_path

    llm = LLM(str(builtin_model_path(TINY_SHAKESPEARE)), device="auto", dtype="auto", progress=False,
              num_kv_blocks=64)

    def text(messages: Messages, max_tokens: int) -> str:
        return llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=max_tokens))[0].text

    return text


def _dev_servers() -> Iterator[Callable[..., DevServer]]:
    """``start(project, *dev_args)`` starts an `edgewise dev` (tests/e2e/dev_process.py); all are killed at the end."""
    servers: list[DevServer] = []

    def start(project: Path, *extra: str) -> DevServer:
        servers.append(DevServer(project, *extra))
        return servers[-1]

    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def start_dev() -> Iterator[Callable[..., DevServer]]:
    """`edgewise dev` processes killed at the end of the test."""
    yield from _dev_servers()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
BROWSER_WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system's headless Chromium (Debian's package), driven by Playwright; skipped where it is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=BROWSER_WAIT_MS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[..., DevServer]]:
    """`serve(project, *dev_args)`: an `edgewise dev` kept for the module, killed at its end."""
    yield from _dev_servers()

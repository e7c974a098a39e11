"""The inference backend `edgewise dev` runs itself: `edgewise backend serve` as a child process,
started with a fresh token, awaited until it listens, its output forwarded, stopped on exit.

It runs from the developer's working directory, which may hold folders named like our packages
(`workers/`, `gpu_backend/` ...): it and every Python process it starts run in safe-path mode
(`-P`, `PYTHONSAFEPATH`), so the working directory is never on their import path.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .config import BackendSpec, EdgewiseConfig, LocalBackendConfig
from .config_schema import builtin_model_names

log = logging.getLogger("edgewise.backend")

TOKEN_ENV = "EDGEWISE_BACKEND_TOKEN"
# Set, it is the token instead of a fresh one, so that a caller of `edgewise dev` (the e2e tests) can
# call the backend it starts, /metrics included; like every token, never printed.
DEV_TOKEN_ENV = "EDGEWISE_DEV_BACKEND_TOKEN"
READY_LINE = re.compile(r"\[edgewise:backend\] Ready on (https?://\S+)")
HOST = "127.0.0.1"
LAST_LINES = 30  # of the output, quoted when the backend fails to start
STOP_TIMEOUT_S = 10.0  # after SIGTERM, before SIGKILL


class BackendStartError(RuntimeError):
    """The backend exited or did not listen in time; the message quotes its last output."""


def served_models(edgewise: EdgewiseConfig) -> list[str]:
    """`--model` values: every built-in model under its own name, then each [edgewise.models] entry
    (which wins over a built-in of the same name)."""
    mapped = {model.name for model in edgewise.models}
    builtins = [name for name in builtin_model_names() if name not in mapped]
    return [*builtins, *(model.serve_argument for model in edgewise.models)]


def serve_command(edgewise: EdgewiseConfig, batch_dir: Path | None = None) -> list[str]:
    """The command line of the local backend (it never carries the token); ``batch_dir``: where it keeps
    async batches (`edgewise dev`: under the project's .wrangler/state)."""
    settings: LocalBackendConfig = edgewise.backend
    command = [sys.executable, "-P", "-m", "wrangler_like_cli.main", "backend", "serve"]
    for model in served_models(edgewise):
        command += ["--model", model]
    command += ["--host", HOST, "--port", str(settings.port), "--device", settings.device, "--dtype", settings.dtype]
    if settings.max_queue is not None:
        command += ["--max-queue", str(settings.max_queue)]
    if edgewise.strict_models:
        command += ["--strict-models"]
    if batch_dir is not None:
        command += ["--batch-dir", str(batch_dir)]
    # the cluster as one config, checked when wrangler.toml was read: the flags are the CLI's shorthands
    command += ["--cluster", json.dumps(settings.cluster_config().to_json(), separators=(",", ":"))]
    return command


class BackendProcess:
    """A running backend: `start()` returns once it listens; `stop()` (or leaving the `with`) ends it."""

    def __init__(self, process: subprocess.Popen[str], token: str) -> None:
        self.process = process
        self.token = token
        self.url: str | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._settled = threading.Event()  # set on the Ready line or at the end of the output
        self._reader = threading.Thread(target=self._read_output, name="edgewise-backend-output", daemon=True)

    @classmethod
    def start(cls, command: Sequence[str], ready_timeout_s: float) -> BackendProcess:
        """Run `command` with a new token (or $EDGEWISE_DEV_BACKEND_TOKEN) in its environment and wait for
        its Ready line."""
        token = os.environ.get(DEV_TOKEN_ENV) or secrets.token_urlsafe(32)
        # PYTHONSAFEPATH: the ranks it spawns (`python -c ...`) would otherwise import from the cwd too
        env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}
        process = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, text=True, encoding="utf-8",
                                   errors="replace", bufsize=1,
                                   start_new_session=True)  # its own group: stop() reaches its children too
        backend = cls(process, token)
        backend._reader.start()
        try:
            backend._wait_ready(ready_timeout_s)
        except BaseException:  # a failed start, or Ctrl-C while the models load
            backend.stop()
            raise
        return backend

    def spec(self, location: str | None = None) -> BackendSpec:
        """How the AI binding reaches this backend."""
        assert self.url is not None, "the backend has not started"
        return BackendSpec(self.url, location=location, token=self.token)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._settled.wait(max(0.0, min(0.1, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise BackendStartError(f"The AI backend did not start within {timeout_s:g} s "
                                        f"([edgewise.backend] ready_timeout_s){self._last_output()}")
        if self.url is None:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
            raise BackendStartError(f"The AI backend exited with status {code} before it was ready"
                                    f"{self._last_output()}")

    def _read_output(self) -> None:
        stream: IO[str] = self.process.stdout  # type: ignore[assignment]
        try:
            for raw_line in stream:
                line = raw_line.rstrip("\r\n").replace(self.token, "***")
                self._output.append(line)
                if self.url is None:
                    self._note_startup_line(line)
                else:
                    log.info("%s", line)
        except (OSError, ValueError):
            pass  # the pipe closed under us at stop()
        finally:
            self._settled.set()

    def _note_startup_line(self, line: str) -> None:
        ready = READY_LINE.search(line)
        if ready:
            self.url = ready.group(1)
            self._settled.set()
        log.debug("%s", line)

    def _last_output(self) -> str:
        lines = list(self._output)
        return ":\n  " + "\n  ".join(lines) if lines else " (it printed nothing)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit status (None if it could not be reaped)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("The AI backend did not stop within %g s of SIGTERM; killing it", timeout_s)
                self._kill_group()
                try:
                    self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    return None
        self._reader.join(timeout=1.0)
        if not self._reader.is_alive() and self.process.stdout is not None:
            self.process.stdout.close()  # else a child of the backend still holds the pipe: leave it to the thread
        return self.process.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.process.kill()

    def __enter__(self) -> BackendProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

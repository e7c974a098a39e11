"""A backend served inside this process: uvicorn on 127.0.0.1, on a thread with its own event loop.

For callers that want a backend only for the length of a ``with`` block (``edgewise ai`` without
``--url``, tests): they talk to it over HTTP, exactly as to a backend in another process.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from .api import create_app
from .client import LocalEngines
from .read_timeouts import ReadTimeouts
from .serve import default_max_queue, listen, server_config

STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0


@contextmanager
def serving(app: Any, startup_timeout_s: float = STARTUP_TIMEOUT_S,
            read_timeouts: ReadTimeouts = ReadTimeouts()) -> Iterator[str]:
    """``with serving(app) as url:`` -> "http://127.0.0.1:PORT" until the block ends, then a clean stop."""
    sock = listen("127.0.0.1", 0, backlog=512)
    server = uvicorn.Server(server_config(app, read_timeouts, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True,
                              name="edgewise-backend")
    thread.start()
    try:
        _wait_started(server, thread, startup_timeout_s)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=SHUTDOWN_TIMEOUT_S)
        sock.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread, timeout_s: float) -> None:
    stopped = threading.Event()  # never set: a sleep that does not hold the GIL hostage
    for _ in range(int(timeout_s * 100)):
        if server.started or not thread.is_alive():
            break
        stopped.wait(0.01)
    if not server.started:
        reason = "it stopped" if not thread.is_alive() else f"not listening after {timeout_s:g} s"
        raise RuntimeError(f"the in-process backend did not start: {reason}")


@contextmanager
def local_backend(models: Mapping[str, str | Path], token: str | None = None, max_queue: int | None = None,
                  **engine_options: Any) -> Iterator[tuple[str, str]]:
    """Load ``models`` (name -> folder) and serve them here: yields (url, token); unloads them at the end.
    ``max_queue`` None: ``default_max_queue`` for the device."""
    token = token or secrets.token_urlsafe(24)
    if max_queue is None:
        max_queue = default_max_queue(engine_options.get("device", "auto"))
    engines = LocalEngines(models, **engine_options)
    try:
        with serving(create_app(engines, token, max_queue=max_queue)) as url:
            yield url, token
    finally:
        engines.shutdown()

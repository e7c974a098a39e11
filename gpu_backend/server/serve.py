"""Running the service: load the models, then serve the app on uvicorn until SIGINT/SIGTERM.

Prints exactly one ``[edgewise:backend] Ready on http://HOST:PORT`` line once it listens (the
real port when asked for port 0); ``edgewise dev`` waits for that line. The token is never
printed or logged. Clients must send their request headers and bodies in time (``ReadTimeouts``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
from starlette.responses import JSONResponse

from ..builtin_models import BUILTIN_MODELS, builtin_model_path
from ..config import default_max_num_seqs, resolve_device
from .api import DEFAULT_MAX_QUEUE, create_app, is_openai
from .batches import BatchConfig
from .client import LocalEngines
from .errors import RequestTimeoutError
from .read_timeouts import ASGIApp, Receive, ReadTimeouts, Scope, Send, uvicorn_config

log = logging.getLogger("edgewise.backend")
READY_PREFIX = "[edgewise:backend] Ready on "
TOKEN_ENV = "EDGEWISE_BACKEND_TOKEN"


def resolve_models(specs: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` (a folder or a built-in model's name) or ``NAME`` (a built-in model) -> name -> folder."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        name, target = name.strip(), (target.strip() if sep else name.strip())
        if not name or not target:
            raise ValueError(f"--model {spec!r}: expected NAME=PATH or the name of a built-in model")
        models[name] = _folder(name, target)
    return models


def _folder(name: str, target: str) -> Path:
    if target in BUILTIN_MODELS:
        return builtin_model_path(target)
    folder = Path(target).expanduser()
    if not (folder / "config.json").is_file():
        builtins = ", ".join(sorted(BUILTIN_MODELS))
        raise ValueError(f"--model {name}={target}: not a Hugging Face folder (no config.json there) and not a "
                         f"built-in model ({builtins})")
    return folder


def default_max_queue(device: str) -> int:
    """Requests a model may queue beyond those it runs, unless told: 256 on a GPU; on CPU as many as
    it runs at once, so an overloaded CPU backend answers 429 within seconds, not after tens of them."""
    resolved = resolve_device(device)
    return DEFAULT_MAX_QUEUE if resolved.type != "cpu" else default_max_num_seqs(resolved)


def serve(models: Mapping[str, Path], *, host: str, port: int, token: str, max_queue: int | None = None,
          log_level: str = "warning", read_timeouts: ReadTimeouts = ReadTimeouts(), strict_models: bool = False,
          batches: BatchConfig | None = None, **engine_options: Any) -> None:
    """``max_queue`` None: ``default_max_queue`` for the device. ``strict_models``: unmapped Workers AI
    names get 5007 instead of the built-in model of their task (model_fallback.py). ``batches``: where
    async batches are kept (None refuses them)."""
    client = LocalEngines(models, strict_models=strict_models, **engine_options)
    try:
        if max_queue is None:
            max_queue = default_max_queue(engine_options.get("device", "auto"))
        app = create_app(client, token, max_queue=max_queue, batches=batches)
        asyncio.run(_serve(app, host, port, log_level, read_timeouts))
    finally:
        client.shutdown()


def server_config(app: ASGIApp, read_timeouts: ReadTimeouts, **options: Any) -> uvicorn.Config:
    """uvicorn's config for the service: its read timeouts, and its own settings that every server shares."""
    return uvicorn_config(app, read_timeouts, _body_timeout_answer(read_timeouts.body_s), lifespan="on",
                          ws_ping_interval=None, access_log=False, **options)


def _body_timeout_answer(timeout_s: float) -> ASGIApp:
    """Workers AI's 3007 envelope (OpenAI's error body on its routes) for a body that did not arrive in time."""
    error = RequestTimeoutError(f"Request timeout: the request body did not arrive within {timeout_s:g} s")

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        body = error.openai_body() if is_openai(scope["path"]) else error.envelope()
        await JSONResponse(body, status_code=error.status)(scope, receive, send)

    return answer


async def _serve(app: Any, host: str, port: int, log_level: str, read_timeouts: ReadTimeouts) -> None:
    sock = listen(host, port)
    config = server_config(app, read_timeouts, log_level=log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if server.started:
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"{READY_PREFIX}http://{shown}:{bound_port}", flush=True)
    await serving


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening socket that uvicorn is handed (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it: without it a token written right after the headers waits
    # for the client's delayed ACK (~40 ms, Nagle), as uvloop leaves it off on passed-in sockets.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock

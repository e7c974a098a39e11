"""``edgewise dev``: binds the front door and per-PoP ports, serves them on uvicorn, reloads on change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
import watchfiles

# The backend's read timeouts: a module of uvicorn and the standard library only, shared rather than copied.
from gpu_backend.server.read_timeouts import ReadTimeouts, uvicorn_config

from .config import ConfigError, WorkerConfig
from .edge import Edge
from .loader import WorkerLoadError

log = logging.getLogger("edgewise.dev")
_WATCHED_SUFFIXES = (".py", ".toml", ".json", ".jsonc", ".dev.vars", ".env")


class BindError(OSError):
    """A port could not be bound; nothing was started."""


@dataclass(frozen=True)
class Listener:
    name: str  # "front door" or a colo
    app: Any
    sock: socket.socket

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]


class _Server(uvicorn.Server):
    # One process serves several listeners: signals are handled once, by serve(), not per server.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it; uvloop leaves Nagle on for passed-in sockets, and a stream's
    # first chunk after the headers then waits for the client's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise BindError(f"cannot listen on {host}:{port} for the {what}: {error.strerror} "
                        "(use --port, or another port in [edgewise] pops)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def open_listeners(edge: Edge, host: str, port: int) -> list[Listener]:
    """Bind every port first, so a taken port fails the start before anything serves."""
    listeners: list[Listener] = []
    try:
        listeners.append(Listener("front door", edge.front_door, bind(host, port, "front door")))
        for pop in edge.pops:
            if pop.port is not None:
                listeners.append(Listener(pop.colo, pop, bind(host, pop.port, f"PoP {pop.colo}")))
    except BindError:
        for listener in listeners:
            listener.sock.close()
        raise
    return listeners


def display_host(host: str) -> str:
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::", "*"):
        return "localhost"
    return f"[{host}]" if ":" in host else host  # an IPv6 address in a URL


async def serve(edge: Edge, listeners: list[Listener], *, reload: bool,
                reload_configs: Callable[[], list[WorkerConfig]], on_ready: Callable[[list[Listener]], None]) -> None:
    """Serve until SIGINT/SIGTERM; with ``reload``, re-import the Workers when their files change.

    The edge's own work (alarms, queue consumers, workflows left running) starts before the first request.
    """
    await edge.start()
    servers = [_Server(_uvicorn_config(listener.app)) for listener in listeners]
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    tasks = [asyncio.ensure_future(server.serve(sockets=[listener.sock])) for server, listener in zip(servers, listeners)]
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.01)
    on_ready(listeners)
    watcher = asyncio.ensure_future(_watch(edge, reload_configs, stop)) if reload else None
    await _wait_for_stop(stop, tasks)
    for server in servers:
        server.should_exit = True
    if watcher is not None:
        watcher.cancel()
    await asyncio.gather(*tasks, *(t for t in [watcher] if t), return_exceptions=True)


async def _wait_for_stop(stop: asyncio.Event, tasks: list[asyncio.Future]) -> None:
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _uvicorn_config(app: Any, read_timeouts: ReadTimeouts = ReadTimeouts()) -> uvicorn.Config:
    """Slow clients get 408 and a closed connection (``ReadTimeouts``: 10 s for headers, 60 s for a body)."""
    return uvicorn_config(app, read_timeouts, log_level="warning", access_log=False, lifespan="off",
                          proxy_headers=False, server_header=False, date_header=True, timeout_graceful_shutdown=5)


async def _watch(edge: Edge, reload_configs: Callable[[], list[WorkerConfig]], stop: asyncio.Event) -> None:
    roots = sorted({script.config.root for script in edge.scripts.values()})
    async for changes in watchfiles.awatch(*roots, stop_event=stop, watch_filter=_is_watched, debounce=200):
        changed = sorted({Path(path).name for _, path in changes})
        try:
            for config in reload_configs():
                edge.reload(config)
        except (ConfigError, WorkerLoadError) as error:
            log.error("Reload failed; still serving the previous version.\n%s", error)
            continue
        print(f"[wrangler:info] Updated and ready ({', '.join(changed)})", file=sys.stderr, flush=True)


def _is_watched(change: watchfiles.Change, path: str) -> bool:
    name = Path(path).name
    return not any(part in path for part in ("/.venv/", "/__pycache__/", "/.git/", "/.wrangler/")) and (
        name.endswith(_WATCHED_SUFFIXES) or name.startswith(".dev.vars")
    )

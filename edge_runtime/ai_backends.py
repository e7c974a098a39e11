"""Where `env.AI` calls go: the inference backends of a dev run, nearest first from each PoP,
each reached through one keep-alive HTTP client.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .catalog import Location, great_circle_km
from .config import BackendSpec, LimitsConfig, WorkerConfig
from .geo import parse_location


@dataclass(frozen=True)
class AiTimeouts:
    """Every wait of a call is bounded; `read_s` is the longest silence between two bytes."""

    connect_s: float = 10.0
    read_s: float = 300.0  # a generation may stream slowly, but never stall longer than this
    write_s: float = 60.0
    pool_s: float = 60.0

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> AiTimeouts:
        return cls(connect_s=limits.ai_connect_timeout_s, read_s=limits.ai_read_timeout_s)

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect_s, read=self.read_s, write=self.write_s, pool=self.pool_s)


class AiBackends:
    """The backends of one dev run, shared by every PoP's binding and kept across reloads."""

    def __init__(self, specs: Sequence[BackendSpec] = (), timeouts: AiTimeouts = AiTimeouts()) -> None:
        self.specs = tuple(specs)
        self.timeouts = timeouts
        self._positions = [_position(spec) for spec in self.specs]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, httpx.AsyncClient] = {}

    @classmethod
    def for_config(cls, config: WorkerConfig, local: BackendSpec | None = None) -> AiBackends:
        """The configured backends, plus the one `edgewise dev` started (if any)."""
        specs = (*config.edgewise.backends, *([local] if local is not None else []))
        return cls(specs, AiTimeouts.from_limits(config.edgewise.limits))

    def nearest_first(self, location: Location) -> tuple[BackendSpec, ...]:
        """By great-circle distance from `location`; a backend without a location is next to every
        PoP; ties keep the configured order."""
        def distance_km(index: int) -> float:
            position = self._positions[index]
            if position is None:
                return 0.0
            return great_circle_km(location.latitude, location.longitude, *position)

        return tuple(self.specs[i] for i in sorted(range(len(self.specs)), key=distance_km))

    def client(self, spec: BackendSpec) -> httpx.AsyncClient:
        """The shared client of `spec` on the running loop (connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._clients = loop, {}  # a new loop (tests): the old clients died with theirs
        client = self._clients.get(spec.url)
        if client is None or client.is_closed:
            client = self._clients[spec.url] = self._new_client(spec)
        return client

    def _new_client(self, spec: BackendSpec) -> httpx.AsyncClient:
        # Streams hold a connection for a whole generation: the backend's queue bounds them, not the pool.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32, keepalive_expiry=2.0)
        return httpx.AsyncClient(base_url=spec.url, timeout=self.timeouts.as_httpx(), limits=limits,
                                 trust_env=not _is_loopback(spec.url))  # no proxy to our own machine

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)


def _position(spec: BackendSpec) -> tuple[float, float] | None:
    if spec.location is None:
        return None
    located = parse_location(spec.location, "backend")
    return located.latitude, located.longitude


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

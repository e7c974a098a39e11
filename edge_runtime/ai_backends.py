"""Where `env.AI` calls go: the inference backends of a dev run, nearest first from each PoP,
each reached through one keep-alive aiohttp session (its C parser keeps the per-token relay cheap).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from .catalog import Location, great_circle_km
from .config import BackendSpec, LimitsConfig, WorkerConfig
from .geo import parse_location


@dataclass(frozen=True)
class AiTimeouts:
    """Every wait of a call is bounded; `read_s` is the longest silence between two bytes. No total:
    a stream lasts as long as its generation."""

    connect_s: float = 10.0
    read_s: float = 300.0  # a generation may stream slowly, but never stall longer than this

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> AiTimeouts:
        return cls(connect_s=limits.ai_connect_timeout_s, read_s=limits.ai_read_timeout_s)

    def as_aiohttp(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=self.connect_s, sock_read=self.read_s)


class AiBackends:
    """The backends of one dev run, shared by every PoP's binding and kept across reloads."""

    def __init__(self, specs: Sequence[BackendSpec] = (), timeouts: AiTimeouts = AiTimeouts()) -> None:
        self.specs = tuple(specs)
        self.timeouts = timeouts
        self._positions = [_position(spec) for spec in self.specs]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: dict[str, aiohttp.ClientSession] = {}

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

    def session(self, spec: BackendSpec) -> aiohttp.ClientSession:
        """The shared session of `spec` on the running loop (connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._sessions = loop, {}  # a new loop (tests): the old sessions died with theirs
        session = self._sessions.get(spec.url)
        if session is None or session.closed:
            session = self._sessions[spec.url] = self._new_session(spec)
        return session

    def _new_session(self, spec: BackendSpec) -> aiohttp.ClientSession:
        # Streams hold a connection for a whole generation: the backend's queue bounds them, not the pool.
        # Idle connections go before uvicorn's 5 s keep-alive does, so a request never meets a closing one.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=2.0)
        return aiohttp.ClientSession(connector=connector, timeout=self.timeouts.as_aiohttp(), auto_decompress=False,
                                     trust_env=not _is_loopback(spec.url))  # no proxy to our own machine

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(session.close() for session in sessions), return_exceptions=True)


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

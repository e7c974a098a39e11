"""Anycast routing: the nearest healthy PoP for a client, and the simulated network delay to it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .catalog import Location, great_circle_km
from .config import LatencyConfig
from .geo import ClientLocation


class Routable(Protocol):
    location: Location
    healthy: bool


def simulated_rtt_ms(location: Location, client: ClientLocation, latency: LatencyConfig) -> float:
    """Round trip from distance: a fixed cost per hop plus a per-1000 km cost (fibre + routing)."""
    return _rtt_ms(client.latitude, client.longitude, location, latency)


def pop_to_pop_rtt_ms(here: Location, there: Location, latency: LatencyConfig) -> float:
    """Round trip between two PoPs (a call to a Durable Object that lives elsewhere); 0 within one PoP."""
    return 0.0 if here == there else _rtt_ms(here.latitude, here.longitude, there, latency)


def _rtt_ms(latitude: float, longitude: float, location: Location, latency: LatencyConfig) -> float:
    if not latency.enabled:
        return 0.0
    distance_km = great_circle_km(latitude, longitude, location.latitude, location.longitude)
    return latency.base_ms + latency.ms_per_1000km * distance_km / 1000.0


class AnycastRouter:
    """Orders PoPs by distance once per client location; picks the first healthy one."""

    def __init__(self, pops: Sequence[Routable]) -> None:
        self._pops = tuple(pops)
        self._order: dict[tuple[float, float], tuple[Routable, ...]] = {}

    def ranked(self, client: ClientLocation) -> tuple[Routable, ...]:
        key = (client.latitude, client.longitude)
        order = self._order.get(key)
        if order is None:
            order = tuple(sorted(self._pops, key=lambda pop: (_distance(pop, client), pop.location.iata)))
            if len(self._order) < 10_000:  # bounded: client coordinates come from request headers
                self._order[key] = order
        return order

    def pick(self, client: ClientLocation) -> Routable | None:
        for pop in self.ranked(client):
            if pop.healthy:
                return pop
        return None


def _distance(pop: Routable, client: ClientLocation) -> float:
    return great_circle_km(client.latitude, client.longitude, pop.location.latitude, pop.location.longitude)

"""Anycast routing: nearest healthy PoP, ranking cache, simulated round-trip time."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edge_runtime.catalog import Location, get_location
from edge_runtime.config import LatencyConfig
from edge_runtime.geo import DEV_DEFAULT, parse_location
from edge_runtime.routing import AnycastRouter, simulated_rtt_ms


@dataclass
class FakePop:
    location: Location
    healthy: bool = True


def _pops(*codes: str) -> list[FakePop]:
    return [FakePop(get_location(code)) for code in codes]


def test_nearest_healthy_pop_and_failover_order() -> None:
    pops = _pops("SFO", "FRA", "LHR", "SIN")
    router = AnycastRouter(pops)
    london = parse_location("51.5074,-0.1278", "header")
    assert [pop.location.iata for pop in router.ranked(london)] == ["LHR", "FRA", "SFO", "SIN"]
    assert router.pick(london).location.iata == "LHR"
    pops[2].healthy = False
    assert router.pick(london).location.iata == "FRA"
    for pop in pops:
        pop.healthy = False
    assert router.pick(london) is None


def test_default_client_is_served_by_dfw() -> None:
    router = AnycastRouter(_pops("NRT", "LHR", "DFW", "SFO"))
    assert router.pick(DEV_DEFAULT).location.iata == "DFW"


def test_rtt_grows_with_distance_and_is_zero_when_off() -> None:
    latency = LatencyConfig(enabled=True, base_ms=2.0, ms_per_1000km=10.0)
    london = parse_location("LHR", "header")
    near = simulated_rtt_ms(get_location("LHR"), london, latency)
    far = simulated_rtt_ms(get_location("SYD"), london, latency)
    assert near == pytest.approx(2.0, abs=0.1)
    assert far == pytest.approx(2.0 + 10.0 * 16.99, rel=0.02)  # London-Sydney is ~17,000 km
    assert simulated_rtt_ms(get_location("SYD"), london, LatencyConfig(enabled=False)) == 0.0

"""The anycast front door: nearest healthy PoP, the health control API, client location, simulated delay."""

from __future__ import annotations

import asyncio
import time

import httpx

POPS = ("LHR", "FRA", "SFO", "SIN")
LONDON = {"edgewise-client-location": "51.5074,-0.1278"}

WHERE = """
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            cf = request.cf
            return Response.json({"colo": cf.colo, "country": cf.country, "rtt": cf.clientTcpRtt,
                                  "ip": request.headers.get("cf-connecting-ip")})
"""


def _colo(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    colo = response.json()["colo"]
    assert response.headers["cf-ray"].endswith(f"-{colo}")
    return colo


def _health(pops: list[dict]) -> dict[str, bool]:
    return {pop["colo"]: pop["healthy"] for pop in pops}


async def test_london_client_is_served_by_lhr(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    assert _colo(await client.get("/", headers=LONDON)) == "LHR"


async def test_failover_to_the_next_nearest_pop_and_back(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    down = await client.post("/cdn-cgi/edgewise/pops/LHR/down")
    assert down.status_code == 200
    assert down.json()["colo"] == "LHR" and down.json()["healthy"] is False
    assert _colo(await client.get("/", headers=LONDON)) == "FRA"
    listing = await client.get("/cdn-cgi/edgewise/pops")
    assert listing.status_code == 200
    assert _health(listing.json()) == {"LHR": False, "FRA": True, "SFO": True, "SIN": True}

    assert (await client.post("/cdn-cgi/edgewise/pops/lhr/up")).json()["healthy"] is True
    assert _colo(await client.get("/", headers=LONDON)) == "LHR"
    assert _health((await client.get("/cdn-cgi/edgewise/pops")).json())["LHR"] is True


async def test_all_pops_down_is_503(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    for colo in POPS:
        assert (await client.post(f"/cdn-cgi/edgewise/pops/{colo}/down")).status_code == 200
    response = await client.get("/", headers=LONDON)
    assert response.status_code == 503
    assert "No healthy PoP" in response.text
    assert (await client.get("/cdn-cgi/edgewise/health")).json() == {"ok": True, "healthyPops": 0}
    await client.post("/cdn-cgi/edgewise/pops/SIN/up")
    assert _colo(await client.get("/", headers=LONDON)) == "SIN"


async def test_unknown_pop_and_endpoint_are_404(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    response = await client.post("/cdn-cgi/edgewise/pops/NRT/down")
    assert response.status_code == 404
    assert response.json()["pops"] == list(POPS)
    assert (await client.get("/cdn-cgi/edgewise/nope")).status_code == 404


async def test_country_header_routes_to_the_nearest_configured_pop(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    response = await client.get("/", headers={"cf-ipcountry": "JP"})
    assert _colo(response) == "SIN"  # Tokyo: Singapore ~5,300 km, San Francisco ~8,300 km
    assert response.json()["country"] == "JP"


async def test_malformed_client_location_is_400_naming_the_header(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    for bad in ("north,west", "91,0", "nowhere"):
        response = await client.get("/", headers={"edgewise-client-location": bad})
        assert response.status_code == 400, bad
        assert "edgewise-client-location" in response.text
    assert _colo(await client.get("/", headers=LONDON)) == "LHR"


async def test_far_client_waits_longer_than_a_near_one(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS, latency={"enabled": True, "base_ms": 0.0, "ms_per_1000km": 50.0})
    started = time.perf_counter()
    near = await client.get("/", headers=LONDON)
    near_s = time.perf_counter() - started
    started = time.perf_counter()
    # Honolulu: nearest is SFO, ~3,850 km away -> ~190 ms simulated
    far = await client.get("/", headers={"edgewise-client-location": "21.3069,-157.8583"})
    far_s = time.perf_counter() - started
    assert (_colo(near), _colo(far)) == ("LHR", "SFO")
    assert near.json()["rtt"] < 5
    assert 180 <= far.json()["rtt"] <= 200
    assert far_s - near_s > 0.1


async def test_ip_prefix_table_routes_the_loopback_client(make_edge, serve) -> None:
    edge = make_edge(WHERE, pops=POPS, ip_locations={"127.0.0.0/8": "SIN"})
    base = await serve(edge.front_door)
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        response = await client.get("/")
    assert _colo(response) == "SIN"
    assert response.json()["country"] == "SG"
    assert response.json()["ip"] == "127.0.0.1"


async def test_without_ip_table_the_loopback_client_is_in_austin(make_edge, serve) -> None:
    edge = make_edge(WHERE, pops=POPS)
    base = await serve(edge.front_door)
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        response = await client.get("/")
    assert _colo(response) == "SFO"
    assert response.json()["country"] == "US"

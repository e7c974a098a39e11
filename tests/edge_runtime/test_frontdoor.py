"""The anycast front door: nearest healthy PoP, the health control API (and who may use it), client
location, simulated delay."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

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


def _token(edge) -> dict[str, str]:
    return {"edgewise-control-token": edge.control_token}


async def test_london_client_is_served_by_lhr(edge_client) -> None:
    _, client = edge_client(WHERE, pops=POPS)
    assert _colo(await client.get("/", headers=LONDON)) == "LHR"


async def test_failover_to_the_next_nearest_pop_and_back(edge_client) -> None:
    edge, client = edge_client(WHERE, pops=POPS)
    down = await client.post("/cdn-cgi/edgewise/pops/LHR/down", headers=_token(edge))
    assert down.status_code == 200
    assert down.json()["colo"] == "LHR" and down.json()["healthy"] is False
    assert _colo(await client.get("/", headers=LONDON)) == "FRA"
    listing = await client.get("/cdn-cgi/edgewise/pops")
    assert listing.status_code == 200
    assert _health(listing.json()) == {"LHR": False, "FRA": True, "SFO": True, "SIN": True}

    bearer = {"authorization": f"Bearer {edge.control_token}"}
    assert (await client.post("/cdn-cgi/edgewise/pops/lhr/up", headers=bearer)).json()["healthy"] is True
    assert _colo(await client.get("/", headers=LONDON)) == "LHR"
    assert _health((await client.get("/cdn-cgi/edgewise/pops")).json())["LHR"] is True


async def test_all_pops_down_is_503(edge_client) -> None:
    edge, client = edge_client(WHERE, pops=POPS)
    for colo in POPS:
        assert (await client.post(f"/cdn-cgi/edgewise/pops/{colo}/down", headers=_token(edge))).status_code == 200
    response = await client.get("/", headers=LONDON)
    assert response.status_code == 503
    assert "No healthy PoP" in response.text
    assert (await client.get("/cdn-cgi/edgewise/health")).json() == {"ok": True, "healthyPops": 0}
    await client.post("/cdn-cgi/edgewise/pops/SIN/up", headers=_token(edge))
    assert _colo(await client.get("/", headers=LONDON)) == "SIN"


async def test_unknown_pop_and_endpoint_are_404(edge_client) -> None:
    edge, client = edge_client(WHERE, pops=POPS)
    response = await client.post("/cdn-cgi/edgewise/pops/NRT/down", headers=_token(edge))
    assert response.status_code == 404
    assert response.json()["pops"] == list(POPS)
    assert (await client.get("/cdn-cgi/edgewise/nope")).status_code == 404


# ---- who may use the control API -------------------------------------------------------------


async def test_changing_health_needs_the_run_token(edge_client) -> None:
    edge, client = edge_client(WHERE, pops=POPS)
    for headers in ({}, {"edgewise-control-token": "guess"}, {"authorization": "Bearer guess"},
                    {"authorization": edge.control_token}):  # not a Bearer credential
        refused = await client.post("/cdn-cgi/edgewise/pops/LHR/down", headers=headers)
        assert refused.status_code == 401, headers
        assert "edgewise-control-token" in refused.json()["error"]
    assert _health((await client.get("/cdn-cgi/edgewise/pops")).json())["LHR"] is True
    assert _colo(await client.get("/", headers=LONDON)) == "LHR"


def test_each_run_has_its_own_token(make_edge) -> None:
    first, second = make_edge(WHERE), make_edge(WHERE)
    assert first.control_token != second.control_token and len(first.control_token) >= 32


def test_a_token_chosen_for_the_run_is_used(make_edge, monkeypatch) -> None:
    monkeypatch.setenv("EDGEWISE_CONTROL_TOKEN", "chosen-for-this-run")
    assert make_edge(WHERE).control_token == "chosen-for-this-run"


# What a page on another site can send with `fetch(url, {method: "POST", mode: "no-cors"})`.
CROSS_SITE = {"origin": "https://evil.example", "sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors",
              "content-type": "text/plain;charset=UTF-8"}


@pytest.mark.parametrize("browser", [
    CROSS_SITE,
    {"origin": "https://evil.example"},  # an older browser: no Sec-Fetch-* headers
    {"origin": "http://localhost:3000", "sec-fetch-site": "same-site"},  # another local dev server
    {"origin": "null"},  # a sandboxed frame or a file:// page
    {"origin": "http://rebound.example:8787", "host": "rebound.example:8787"},  # DNS rebinding to 127.0.0.1
])
async def test_browser_requests_from_other_origins_are_refused(edge_client, browser: dict[str, str]) -> None:
    edge, client = edge_client(WHERE, pops=POPS)
    for method, path in (("POST", "/cdn-cgi/edgewise/pops/LHR/down"), ("GET", "/cdn-cgi/edgewise/pops")):
        refused = await client.request(method, path, headers={**browser, **_token(edge)})
        assert refused.status_code == 403, (method, browser)
        assert "other" in refused.json()["error"]
    assert _health((await client.get("/cdn-cgi/edgewise/pops")).json())["LHR"] is True


@pytest.mark.parametrize("host", ["localhost:8787", "127.0.0.1:8787", "[::1]:8787", "192.168.1.20:8787"])
async def test_same_origin_pages_and_typed_urls_are_served(edge_client, host: str) -> None:
    edge, client = edge_client(WHERE, pops=POPS)
    same_origin = {"origin": f"http://{host}", "host": host, "sec-fetch-site": "same-origin"}
    assert (await client.get("/cdn-cgi/edgewise/pops", headers=same_origin)).status_code == 200
    typed = {"host": host, "sec-fetch-site": "none"}
    assert (await client.get("/cdn-cgi/edgewise/health", headers=typed)).status_code == 200
    down = await client.post("/cdn-cgi/edgewise/pops/LHR/down", headers={**same_origin, **_token(edge)})
    assert down.json()["healthy"] is False


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

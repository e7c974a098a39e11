"""A PoP through the front door: the request the Worker sees, request.cf, CF-Ray, limits and errors
(checklist 5-8, 10-11, 13, 16-19)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import httpx

RAY_RE = re.compile(r"^[0-9a-f]{16}-[A-Z]{3}$")

ECHO = """
    import json
    from http import HTTPMethod
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            cf = request.cf
            return Response.json({
                "method": str(request.method),
                "is_enum": request.method is HTTPMethod.POST,
                "equals_str": request.method == "POST",
                "url": request.url,
                "content_type": request.headers.get("CONTENT-TYPE"),
                "x_dup": request.headers.get_all("x-dup"),
                "accept_encoding": request.headers.get("accept-encoding"),
                "connecting_ip": request.headers.get("cf-connecting-ip"),
                "ipcountry": request.headers.get("cf-ipcountry"),
                "ray": request.headers.get("cf-ray"),
                "cf": {key: cf[key] for key in ("colo", "country", "city", "latitude", "longitude",
                                                 "clientAcceptEncoding", "httpProtocol")},
            })
"""


async def test_request_method_is_an_http_method_enum(edge_client) -> None:
    _, client = edge_client(ECHO)
    seen = (await client.post("/", content=b"x")).json()
    assert (seen["method"], seen["is_enum"], seen["equals_str"]) == ("POST", True, True)
    seen = (await client.put("/", content=b"x")).json()
    assert (seen["method"], seen["is_enum"], seen["equals_str"]) == ("PUT", False, False)


async def test_request_headers_are_case_insensitive_and_repeats_join(edge_client) -> None:
    _, client = edge_client(ECHO)
    response = await client.post("/", content=b"{}", headers=[
        ("Content-Type", "application/json"), ("X-Dup", "a"), ("X-Dup", "b"),
    ])
    seen = response.json()
    assert seen["content_type"] == "application/json"
    assert seen["x_dup"] == ["a, b"]


async def test_json_body_and_second_read_raises_oserror(edge_client) -> None:
    _, client = edge_client("""
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                data = await request.json()
                try:
                    await request.text()
                    second = "no error"
                except OSError as error:
                    second = f"OSError: {error}"
                return Response.json({"type": type(data).__name__, "name": data["name"],
                                      "attr": data.name, "second": second})
    """)
    response = await client.post("/", json={"name": "edge"})
    assert response.status_code == 200
    assert response.json() == {"type": "JsDict", "name": "edge", "attr": "edge",
                               "second": "OSError: Body already used"}


RESPONSES = """
    from urllib.parse import urlsplit
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            path = urlsplit(request.url).path
            if path == "/json":
                return Response.json({"obj": {"field": 123}}, status=404)
            if path == "/dup":
                return Response("x", headers=[("X-A", "1"), ("X-A", "2")])
            if path == "/redirect":
                return Response.redirect("https://e.com/", 301)
            if path == "/redirect-default":
                return Response.redirect("https://e.com/")
            return Response("GET body")
"""


async def test_response_json_with_status(edge_client) -> None:
    _, client = edge_client(RESPONSES)
    response = await client.get("/json")
    assert response.status_code == 404
    assert response.content == b'{"obj": {"field": 123}}'
    assert response.headers["content-type"] == "application/json"


async def test_duplicate_response_headers_reach_the_client(edge_client) -> None:
    _, client = edge_client(RESPONSES)
    response = await client.get("/dup")
    assert ", ".join(response.headers.get_list("x-a")) == "1, 2"


async def test_redirects(edge_client) -> None:
    _, client = edge_client(RESPONSES)
    response = await client.get("/redirect")
    assert response.status_code == 301
    assert response.headers["location"] == "https://e.com/"
    response = await client.get("/redirect-default")
    assert response.status_code == 302
    assert response.headers["location"] == "https://e.com/"


async def test_head_gets_no_body(edge_client) -> None:
    _, client = edge_client(RESPONSES)
    response = await client.head("/")
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["content-type"] == "text/plain;charset=UTF-8"
    assert response.headers["content-length"] == "8"  # what the GET body would be
    assert (await client.get("/")).content == b"GET body"


async def test_head_through_a_real_server(make_edge, serve) -> None:
    edge = make_edge(RESPONSES)
    base = await serve(edge.front_door)
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        head = await client.head("/")
        get = await client.get("/")
    assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "8")
    assert (get.content, get.headers["content-length"]) == (b"GET body", "8")


ENV = """
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            env = self.env
            return Response.json({"message": env.MESSAGE, "other": env.OTHER, "secret": env.API_KEY,
                                  "nested": env.CONFIG.level, "by_key": env["MESSAGE"]})
"""


async def test_vars_overrides_and_dev_vars_secrets_on_env(edge_client) -> None:
    _, client = edge_client(ENV, vars={"MESSAGE": "My env var", "OTHER": "from toml", "CONFIG": {"level": 3}},
                            var_overrides={"OTHER": "from --var"}, dev_vars="API_KEY=s3cret\n")
    assert (await client.get("/")).json() == {"message": "My env var", "other": "from --var", "secret": "s3cret",
                                              "nested": 3, "by_key": "My env var"}


async def test_missing_env_name_is_a_1101_naming_the_config(edge_client) -> None:
    _, client = edge_client(ENV, vars={"MESSAGE": "m", "OTHER": "o", "CONFIG": {"level": 1}})
    response = await client.get("/")
    assert response.status_code == 500
    assert "env has no binding 'API_KEY'" in response.text


async def test_request_cf_defaults_to_miniflares_austin(edge_client) -> None:
    _, client = edge_client(ECHO)
    response = await client.get("/", headers={"Accept-Encoding": "gzip, deflate, zstd"})
    seen = response.json()
    assert seen["cf"]["colo"] == "DFW"
    assert seen["cf"]["country"] == "US"
    assert seen["cf"]["city"] == "Austin"
    assert seen["cf"]["latitude"] == "30.27130"
    assert seen["cf"]["longitude"] == "-97.74260"
    assert seen["cf"]["httpProtocol"] == "HTTP/1.1"
    assert seen["cf"]["clientAcceptEncoding"] == "gzip, deflate, zstd"
    assert seen["accept_encoding"] == "br, gzip"
    assert seen["connecting_ip"] == "127.0.0.1"
    assert seen["ipcountry"] == "US"


async def test_mf_cf_blob_overrides_cf_and_routes_there(edge_client) -> None:
    _, client = edge_client(ECHO)
    response = await client.get("/", headers={"MF-CF-Blob": json.dumps({"colo": "LHR", "country": "GB"})})
    seen = response.json()
    assert seen["cf"]["colo"] == "LHR"
    assert seen["cf"]["country"] == "GB"
    assert response.headers["cf-ray"].endswith("-LHR")


async def test_config_overrides_cf_and_the_default_client_location(edge_client) -> None:
    _, client = edge_client(ECHO, edgewise={"client_location": "LHR", "cf": {"city": "Configured City"}})
    seen = (await client.get("/")).json()
    assert seen["cf"]["colo"] == "LHR"
    assert seen["cf"]["country"] == "GB"
    assert seen["cf"]["city"] == "Configured City"


async def test_cf_ray_matches_colo_and_the_request_header(edge_client) -> None:
    _, client = edge_client(ECHO)
    rays = set()
    for location in ("DFW", "LHR", "51.5,-0.12"):
        response = await client.get("/", headers={"edgewise-client-location": location})
        ray = response.headers["cf-ray"]
        seen = response.json()
        assert RAY_RE.fullmatch(ray), ray
        assert ray.split("-")[1] == seen["cf"]["colo"]
        assert seen["ray"] == ray
        rays.add(ray)
    assert len(rays) == 3
    assert [ray[-3:] for ray in sorted(rays, key=lambda r: r[-3:])] == ["DFW", "LHR", "LHR"]


ERRORS = """
    import asyncio
    from urllib.parse import urlsplit
    from workers import Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            path = urlsplit(request.url).path
            if path == "/raise":
                raise ValueError("boom from the worker")
            if path == "/dict":
                return {"not": "a response"}
            if path == "/hang":
                await asyncio.sleep(3600)
            if path == "/spin":
                try:
                    while True:  # never awaits: only the watchdog can stop it
                        pass
                except Exception:
                    return Response("swallowed the limit")
            if path == "/upload":
                return Response(f"read {len(await request.bytes())} bytes")
            return Response("fine")
"""


async def _still_serves(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert (response.status_code, response.text) == (200, "fine")


async def test_uncaught_exception_is_1101_and_logged(edge_client, caplog) -> None:
    _, client = edge_client(ERRORS)
    with caplog.at_level(logging.ERROR, logger="edgewise.edge"):
        response = await client.get("/raise")
    assert response.status_code == 500
    assert "error code: 1101" in response.text
    assert "ValueError: boom from the worker" in response.text
    ray = response.headers["cf-ray"]
    assert RAY_RE.fullmatch(ray)
    assert f"Ray ID: {ray}" in response.text
    [record] = [r for r in caplog.records if r.name == "edgewise.edge"]
    logged = record.getMessage()
    assert "at DFW" in logged and f"ray {ray}" in logged
    assert "Traceback (most recent call last)" in logged
    assert 'raise ValueError("boom from the worker")' in logged
    await _still_serves(client)


async def test_uncaught_exception_is_an_html_page_for_browsers(edge_client) -> None:
    _, client = edge_client(ERRORS)
    response = await client.get("/raise", headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/html;charset=UTF-8"
    assert "<h1>Error 1101: Worker threw exception</h1>" in response.text


async def test_handler_returning_a_dict_is_500_naming_response(edge_client) -> None:
    _, client = edge_client(ERRORS)
    response = await client.get("/dict")
    assert response.status_code == 500
    assert "1101" in response.text
    assert "'Response'" in response.text and "fetch returned dict" in response.text
    await _still_serves(client)


async def test_handler_that_never_returns_is_1102_after_wall_time(edge_client) -> None:
    _, client = edge_client(ERRORS, limits={"wall_time_s": 0.5})
    started = time.perf_counter()
    async with asyncio.timeout(5):
        response = await client.get("/hang")
    elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert "error code: 1102" in response.text
    assert "0.5 s" in response.text
    assert 0.45 <= elapsed < 2.0
    await _still_serves(client)


async def test_handler_that_spins_without_awaiting_is_stopped_with_1102(edge_client) -> None:
    _, client = edge_client(ERRORS, limits={"wall_time_s": 0.5})
    started = time.perf_counter()
    response = await client.get("/spin")
    elapsed = time.perf_counter() - started
    assert response.status_code == 503
    assert "error code: 1102" in response.text
    assert 0.45 <= elapsed < 3.0
    await _still_serves(client)


async def test_request_body_over_the_limit_is_413(edge_client) -> None:
    _, client = edge_client(ERRORS, limits={"max_request_body_bytes": 100})
    response = await client.post("/upload", content=b"x" * 101)
    assert response.status_code == 413
    assert "100 bytes" in response.text
    await _still_serves(client)

    async def chunks():  # no content-length: the limit applies while the Worker reads
        for _ in range(5):
            yield b"y" * 30

    response = await client.post("/upload", content=chunks())
    assert response.status_code == 413
    await _still_serves(client)
    response = await client.post("/upload", content=b"z" * 100)
    assert (response.status_code, response.text) == (200, "read 100 bytes")


async def test_subrequest_limit(make_edge, serve) -> None:
    edge = make_edge("""
        import workers
        from workers import Response, WorkerEntrypoint

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                if request.url.endswith("/leaf"):
                    return Response("leaf")
                leaf = request.url.rstrip("/") + "/leaf"  # this edge, on its real port
                first = await workers.fetch(leaf)
                try:
                    await workers.fetch(leaf)
                    second = "no error"
                except Exception as error:
                    second = f"{type(error).__name__}: {error}"
                return Response(f"first={first.status} {await first.text()}; second={second}")
    """, limits={"max_subrequests": 1})
    base = await serve(edge.front_door)
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        response = await client.get("/")
    assert response.status_code == 200
    assert response.text.startswith("first=200 leaf; second=SubrequestLimitError: Too many subrequests")
    assert "(limit 1;" in response.text


async def test_streamed_body_arrives_in_order(edge_client) -> None:
    _, client = edge_client("""
        import asyncio
        from workers import Response, WorkerEntrypoint

        async def numbers():
            for i in range(20):
                await asyncio.sleep(0)
                yield f"{i}\\n".encode()

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response(numbers(), headers={"content-type": "text/plain"})
    """)
    response = await client.get("/")
    assert response.status_code == 200
    assert response.text == "".join(f"{i}\n" for i in range(20))
    assert RAY_RE.fullmatch(response.headers["cf-ray"])


async def test_client_disconnect_closes_a_streamed_body(make_edge, serve, wait_for) -> None:
    edge = make_edge("""
        import asyncio
        from workers import Response, WorkerEntrypoint

        EVENTS = []

        async def forever():
            try:
                i = 0
                while True:
                    yield f"chunk {i}\\n".encode()
                    i += 1
                    await asyncio.sleep(0.01)
            finally:
                EVENTS.append("closed")

        class Default(WorkerEntrypoint):
            async def fetch(self, request):
                return Response(forever())
    """, pops=("DFW",))
    events = edge.pop("DFW").worker.module.EVENTS
    base = await serve(edge.front_door)
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        async with client.stream("GET", "/") as response:
            first = await anext(response.aiter_lines())
        assert first == "chunk 0"
        assert events == []
    await wait_for(lambda: events == ["closed"], timeout_s=5)


SLOW = """
    import asyncio
    from workers import Response, WorkerEntrypoint

    EVENTS = []

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            EVENTS.append("started")
            try:
                await asyncio.sleep(30)  # stands for an AI generation or a slow subrequest
            except asyncio.CancelledError:
                EVENTS.append("cancelled")
                raise
            return Response("too late")
"""


async def test_client_disconnect_cancels_a_waiting_handler(make_edge, serve, wait_for) -> None:
    edge = make_edge(SLOW)
    base = await serve(edge.front_door)
    events = edge.pops[0].worker.module.EVENTS
    async with httpx.AsyncClient() as client:
        request = asyncio.ensure_future(client.get(base + "/"))
        await wait_for(lambda: events == ["started"])
        request.cancel()  # closes the connection
        await asyncio.gather(request, return_exceptions=True)
    await wait_for(lambda: events == ["started", "cancelled"], timeout_s=2.0)


async def test_an_unknown_http_method_is_405_and_the_edge_keeps_serving(edge_client) -> None:
    _, client = edge_client(ERRORS)
    response = await client.request("PROPFIND", "/")
    assert response.status_code == 405
    assert "PROPFIND" in response.text
    await _still_serves(client)

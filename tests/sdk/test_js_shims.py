"""The ``js`` and ``pyodide`` shims: the FFI idioms of Cloudflare's examples, run on CPython."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import js
from js import JSON, URL, Date, Object, WebSocketPair, console
from pyodide.ffi import JsException, JsProxy, create_once_callable, create_proxy, run_sync, to_js
from pyodide.http import FetchResponse, pyfetch
from workers import JsDict, Response
from workers.websocket import MessageEvent


def test_console_reaches_logging(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="edgewise.worker"):
        console.log("hello", 1, True, None)
        console.warn("careful")
        console.error("bad", {"a": 1})
        console.debug("detail")
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.INFO, "hello 1 true undefined"),
        (logging.WARNING, "careful"),
        (logging.ERROR, 'bad {"a": 1}'),
        (logging.DEBUG, "detail"),
    ]


def test_json_round_trip_with_attribute_access() -> None:
    text = JSON.stringify({"colo": "DFW", "nested": {"n": [1, 2]}})
    assert text == '{"colo":"DFW","nested":{"n":[1,2]}}'
    parsed = JSON.parse(text)
    assert parsed.colo == "DFW" and parsed.nested.n == [1, 2] and parsed["colo"] == "DFW"
    assert JSON.stringify({"a": 1}, None, 2) == '{\n  "a": 1\n}'
    assert JSON.stringify({"a": 1, "b": 2}, ["a"]) == '{"a":1}'
    assert JSON.stringify({"a": 1}, lambda key, value: value * 10 if key == "a" else value) == '{"a":10}'


def test_object_helpers() -> None:
    obj = Object.fromEntries([("a", 1), ["b", 2]])
    assert isinstance(obj, JsDict) and obj == {"a": 1, "b": 2} and obj.b == 2
    assert Object.keys(obj) == ["a", "b"]
    assert Object.entries(obj) == [["a", 1], ["b", 2]]


async def test_response_new_in_both_spellings() -> None:
    response = js.Response.new("hi", {"status": 201, "headers": {"x-a": "1"}})
    assert isinstance(response, Response)
    assert (response.status, response.headers["x-a"], await response.text()) == (201, "1", "hi")
    assert js.Response.new(None, status=204).status == 204


async def test_fetch_rejects_a_non_dict_init() -> None:
    with pytest.raises(TypeError, match="init must be a dict"):
        await js.fetch("https://example.com/", "POST")


async def test_fetch_maps_the_init_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    async def fake_fetch(resource: str, **kwargs: object) -> Response:
        calls.append((resource, kwargs))
        return Response("ok")

    monkeypatch.setattr("workers.fetch", fake_fetch)
    await js.fetch("https://example.com/", {"method": "POST", "headers": {"a": "b"}, "body": "x"})
    assert calls == [("https://example.com/", {"method": "POST", "headers": {"a": "b"}, "body": "x"})]


def test_url_parts() -> None:
    url = URL.new("https://Example.com:8443/a/b?q=1&q=2&x=#top")
    assert (url.protocol, url.host, url.hostname, url.port) == ("https:", "example.com:8443", "example.com", "8443")
    assert (url.pathname, url.search, url.hash) == ("/a/b", "?q=1&q=2&x=", "#top")
    assert url.origin == "https://example.com:8443"
    assert url.href == str(url) == "https://example.com:8443/a/b?q=1&q=2&x=#top"
    assert url.searchParams.get("q") == "1" and url.searchParams.getAll("q") == ["1", "2"]
    assert url.searchParams.get("missing") is None
    assert URL.new("https://e.com").pathname == "/"
    assert URL.new("/x?y=1", "https://e.com/a/").href == "https://e.com/x?y=1"
    with pytest.raises(TypeError, match="Invalid URL"):
        URL.new("not a url")


def test_date_now_is_milliseconds() -> None:
    assert abs(Date.now() / 1000 - time.time()) < 5


def test_to_js_with_dict_converter() -> None:
    converted = to_js({"a": {"b": [1, {"c": 2}]}, "t": (1, 2)}, dict_converter=Object.fromEntries)
    assert converted == {"a": {"b": [1, {"c": 2}]}, "t": [1, 2]}
    assert isinstance(converted, JsDict) and isinstance(converted.a.b[1], JsDict)
    assert converted.a.b[1].c == 2
    assert to_js([1, 2]) == [1, 2]


def test_to_js_bytes_has_a_buffer() -> None:
    image = to_js(b"\x89PNG")
    assert image == b"\x89PNG" and image.buffer == b"\x89PNG" and type(image.buffer) is bytes
    assert Response(image.buffer).status == 200


def test_create_proxy_and_once_callable() -> None:
    proxy = create_proxy(lambda x: x + 1)
    assert proxy(1) == 2 and isinstance(proxy, JsProxy)
    proxy.destroy()
    with pytest.raises(JsException, match="destroyed"):
        proxy(1)
    once = create_once_callable(lambda: "done")
    assert once() == "done"
    with pytest.raises(JsException):
        once()
    assert not isinstance({"a": 1}, JsProxy) and not isinstance(JsDict(), JsProxy)


def test_websocket_pair_from_js_with_a_proxied_listener() -> None:
    client, server = WebSocketPair.new().object_values()
    received: list[str] = []
    server.addEventListener("message", create_proxy(lambda event: received.append(event.data)))
    server.accept()
    client.send("hello")
    assert received == ["hello"]
    queue = client.bridge()
    server.send("back")
    assert queue.get_nowait() == MessageEvent("back")


async def test_run_sync_refuses_inside_the_event_loop() -> None:
    async def value() -> int:
        return 1

    with pytest.raises(RuntimeError, match="cannot block inside the running event loop"):
        run_sync(value())


def test_run_sync_without_a_loop() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    assert run_sync(value()) == 7


def test_unknown_names_say_so() -> None:
    with pytest.raises(ImportError, match="cannot import name 'Proxy'"):
        from js import Proxy  # noqa: F401
    with pytest.raises(AttributeError, match="edgewise's js shim has no 'Proxy'"):
        js.Proxy
    assert not hasattr(js, "Proxy")


def test_pyodide_http_names() -> None:
    assert FetchResponse is Response
    assert asyncio.iscoroutinefunction(pyfetch)

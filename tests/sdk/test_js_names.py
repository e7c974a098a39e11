"""What Worker code reaches through ``js``: missing names say so, and ``Request._js_request`` is a JS Request."""

from __future__ import annotations

import importlib

import pytest

import js
from workers import Headers, JsDict, Request
from workers.request import JsRequestView


def test_from_js_import_a_missing_name_names_it() -> None:
    with pytest.raises(ImportError) as raised:
        from js import Proxy  # noqa: F401
    message = str(raised.value)
    assert message.startswith("cannot import name 'Proxy' from 'js'")
    assert "edgewise does not support js.Proxy" in message and "HTMLRewriter" in message


def test_the_message_survives_in_functions_and_multi_name_imports() -> None:
    def load() -> None:
        from js import JSON, ReadableStream  # noqa: F401

    with pytest.raises(ImportError, match="edgewise does not support js.ReadableStream"):
        load()
    with pytest.raises(ImportError, match="edgewise does not support js.Proxy"):
        exec("from js import (\n    console,\n    Proxy,\n)", {})


def test_attribute_access_stays_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="edgewise does not support js.Proxy") as raised:
        js.Proxy  # noqa: B018
    assert raised.value.name == "Proxy"
    assert hasattr(js, "Proxy") is False
    assert getattr(js, "Proxy", None) is None
    assert getattr(importlib.import_module("js"), "AbortController", "fallback") == "fallback"


def test_every_listed_name_imports() -> None:
    assert {"HTMLRewriter", "WebSocket"} <= set(js.__all__)
    for name in js.__all__:
        assert getattr(js, name) is not None
    namespace: dict[str, object] = {}
    exec("from js import *", namespace)
    assert set(js.__all__) <= set(namespace)


# --- Request._js_request -------------------------------------------------------------------------------------

def _incoming() -> Request:
    headers = Headers([("content-type", "application/json"), ("x-a", "1"), ("set-cookie", "a=1"), ("set-cookie", "b=2")])
    return Request._incoming("https://edge.test/p?q=1", "POST", headers, b'{"n": 1}',
                             lambda: JsDict(colo="DFW", country="US"))


async def test_js_request_offers_the_js_request_surface() -> None:
    request = _incoming()
    js_request = request._js_request
    assert isinstance(js_request, JsRequestView)
    assert (js_request.url, js_request.method) == ("https://edge.test/p?q=1", "POST")
    assert type(js_request.method) is str
    assert js_request.cf.colo == "DFW" and js_request.cf["country"] == "US"
    assert js_request.headers.get("X-A") == "1" and js_request.headers.get("nope") is None
    assert js_request.headers.has("content-type")
    assert js_request.headers.getSetCookie() == ["a=1", "b=2"]
    pairs = {key: value for key, value in js_request.headers}  # Pyodide iterates a JS Headers as [name, value]
    assert pairs["x-a"] == "1" and pairs["content-type"] == "application/json"
    assert list(js_request.headers.keys()) == list(request.headers)
    seen: list[tuple[str, str]] = []
    js_request.headers.forEach(lambda value, key: seen.append((key, value)))
    assert ("x-a", "1") in seen


async def test_js_request_shares_the_body_and_headers() -> None:
    request = _incoming()
    request._js_request.headers.set("x-b", "2")
    assert request.headers["x-b"] == "2"
    assert not request._js_request.bodyUsed
    assert (await request._js_request.json()) == {"n": 1}
    assert request.body_used and request._js_request.bodyUsed
    with pytest.raises(OSError, match="Body already used"):
        await request.text()


def test_js_request_of_a_constructed_request() -> None:
    request = Request("https://example.com/a", method="PUT", headers={"a": "b"}, cf={"cacheTtl": 5})
    assert request._js_request.method == "PUT" and request._js_request.cf.cacheTtl == 5
    clone = request._js_request.clone()
    assert clone.url == "https://example.com/a" and clone.headers.get("a") == "b"
    assert repr(request._js_request) == "JsRequest(method='PUT', url='https://example.com/a')"

"""``workers.Request``: construction, the HTTPMethod enum, and reading the body exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http import HTTPMethod

import httpx
import pytest

from workers import File, FormData, Headers, JsDict, Request


async def _chunks(*parts: bytes | str) -> AsyncIterator[bytes | str]:
    for part in parts:
        yield part


def test_method_is_http_method_enum() -> None:
    request = Request("https://test.com/", method="post")
    assert request.method is HTTPMethod.POST
    assert request.method == "POST"
    assert Request("https://test.com/").method is HTTPMethod.GET
    assert Request("https://test.com/", method=HTTPMethod.DELETE).method == "DELETE"


def test_unknown_method_is_type_error() -> None:
    with pytest.raises(TypeError, match="BREW"):
        Request("https://test.com/", method="BREW")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://test.com", "https://test.com/"),
        ("http://example.com:8080?q=1", "http://example.com:8080/?q=1"),
        ("https://test.com/a/b?x=1#frag", "https://test.com/a/b?x=1#frag"),
        ("HTTPS://test.com/p", "https://test.com/p"),
    ],
)
def test_url_is_normalised(given: str, expected: str) -> None:
    assert Request(given).url == expected


@pytest.mark.parametrize("url", ["/relative/path", "test.com", ""])
def test_relative_url_is_type_error(url: str) -> None:
    with pytest.raises(TypeError, match="absolute URL"):
        Request(url)


async def test_json_returns_attribute_capable_dict() -> None:
    request = Request("https://test.com/", method="POST", body='{"name": "Ada", "tags": [{"k": 1}]}')
    data = await request.json()
    assert data == {"name": "Ada", "tags": [{"k": 1}]}
    assert isinstance(data, dict) and isinstance(data, JsDict)
    assert data.name == "Ada"
    assert data.tags[0].k == 1


async def test_second_body_read_raises_os_error() -> None:
    request = Request("https://test.com/", method="POST", body="once")
    assert not request.body_used
    assert await request.text() == "once"
    assert request.body_used and request.bodyUsed
    with pytest.raises(OSError, match="Body already used"):
        await request.text()
    with pytest.raises(OSError):
        await request.json()


async def test_text_and_bytes() -> None:
    text_request = Request("https://test.com/", method="PUT", body="héllo")
    assert await text_request.text() == "héllo"
    assert text_request.headers.get("content-type") == "text/plain;charset=UTF-8"
    bytes_request = Request("https://test.com/", method="PUT", body=b"\x00\xff")
    assert await bytes_request.bytes() == b"\x00\xff"
    assert bytes_request.headers.get("content-type") is None


async def test_empty_body_reads_as_empty() -> None:
    request = Request("https://test.com/")
    assert request.body is None
    assert await request.bytes() == b""


async def test_form_data_urlencoded() -> None:
    request = Request(
        "https://test.com/", method="POST", body="a=1&b=two+words&a=3&empty=",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    form = await request.form_data()
    assert form.get("a") == "1"
    assert form.get_all("a") == ["1", "3"]
    assert form.get("b") == "two words"
    assert form.get("empty") == ""
    assert form.get("missing") is None


async def test_form_data_multipart_from_a_real_client() -> None:
    upload_file = ("notes.txt", b"line1\nline2\r\n", "text/plain")
    encoded = httpx.Request("POST", "https://test.com/", data={"name": "Ada"}, files={"upload": upload_file})
    request = Request("https://test.com/", method="POST", body=encoded.read(), headers=dict(encoded.headers))
    form = await request.formData()
    assert form.get("name") == "Ada"
    upload = form.get("upload")
    assert isinstance(upload, File)
    assert (upload.name, upload.type) == ("notes.txt", "text/plain")
    assert await upload.bytes() == b"line1\nline2\r\n"


async def test_form_data_body_round_trips() -> None:
    form = FormData({"field": "value"})
    form.append("bin", File([bytes(range(256))], "b.bin", type="application/octet-stream"))
    request = Request("https://test.com/", method="POST", body=form)
    assert request.headers.get("content-type").startswith("multipart/form-data; boundary=")
    parsed = await request.form_data()
    assert parsed.get("field") == "value"
    assert await parsed.get("bin").bytes() == bytes(range(256))


async def test_form_data_of_plain_text_is_type_error() -> None:
    request = Request("https://test.com/", method="POST", body="a=1")
    with pytest.raises(TypeError, match="text/plain"):
        await request.form_data()


async def test_body_from_async_iterator() -> None:
    request = Request("https://test.com/", method="POST", body=_chunks(b"ab", "cd", b"", b"ef"))
    assert await request.text() == "abcdef"


async def test_body_stream_iterates_once() -> None:
    request = Request("https://test.com/", method="POST", body=b"chunk")
    assert [chunk async for chunk in request.body] == [b"chunk"]
    assert request.body_used
    with pytest.raises(OSError):
        await request.bytes()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_get_or_head_with_body_is_type_error(method: str) -> None:
    with pytest.raises(TypeError, match="cannot have a body"):
        Request("https://test.com/", method=method, body="x")
    with pytest.raises(TypeError):
        Request("https://test.com/", body="x")  # the default method is GET


async def test_clone_gives_two_readable_bodies() -> None:
    request = Request("https://test.com/", method="POST", body="payload", headers={"X-A": "1"})
    clone = request.clone()
    assert clone is not request
    assert (clone.url, clone.method, clone.headers.get("x-a")) == (request.url, HTTPMethod.POST, "1")
    assert await clone.text() == "payload"
    assert await request.text() == "payload"
    with pytest.raises(OSError):
        request.clone()


def test_clone_headers_are_independent() -> None:
    request = Request("https://test.com/", headers={"X-A": "1"})
    clone = request.clone()
    clone.headers.set("X-A", "2")
    assert request.headers.get("x-a") == "1"


async def test_request_from_request_overrides_method() -> None:
    original = Request("https://test.com/path", method="POST", body="data", headers={"X-A": "1"}, cf={"cacheTtl": 5})
    copy = Request(original, method="PUT")
    assert copy.method is HTTPMethod.PUT
    assert copy.url == "https://test.com/path"
    assert copy.headers.get("x-a") == "1"
    assert copy.cf.cacheTtl == 5
    assert await copy.text() == "data"
    assert original.body_used  # the body moved to the new request, as in JS


def test_request_from_request_with_new_headers() -> None:
    original = Request("https://test.com/", headers={"X-A": "1"})
    copy = Request(original, headers={"X-B": "2"})
    assert copy.headers.get("x-a") is None
    assert copy.headers.get("x-b") == "2"
    assert original.headers.get("x-a") == "1"


async def test_request_from_used_request_is_type_error() -> None:
    original = Request("https://test.com/", method="POST", body="data")
    await original.text()
    with pytest.raises(TypeError, match="already been used"):
        Request(original)


def test_headers_object_is_accepted() -> None:
    request = Request("https://test.com/", headers=Headers([("Cookie", "a=1"), ("Cookie", "b=2")]))
    assert request.headers.get("cookie") == "a=1, b=2"


def test_repr() -> None:
    assert repr(Request("https://test.com", method="POST")) == "Request(method='POST', url='https://test.com/')"


def test_js_object_and_new() -> None:
    request = Request.new("https://test.com/x", {"method": "PATCH", "headers": {"X-A": "1"}})
    assert request.js_object is request
    assert request.method is HTTPMethod.PATCH
    assert request.headers.get("x-a") == "1"


def test_defaults_and_cf() -> None:
    request = Request("https://test.com/")
    assert request.redirect == "follow"
    assert request.cf is None
    with_cf = Request("https://test.com/", cf={"cacheEverything": True}, redirect="manual")
    assert with_cf.cf.cacheEverything is True
    assert with_cf.redirect == "manual"

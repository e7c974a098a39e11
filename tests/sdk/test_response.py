"""``workers.Response``: body types and their content-types, status rules, and the JSON/redirect helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http import HTTPStatus

import pytest

from workers import Blob, FetchResponse, File, FormData, Headers, JsDict, Response, WebSocketPair


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_str_body_defaults_to_text_plain() -> None:
    response = Response("Hello world!")
    assert response.status == 200
    assert response.headers.get("content-type") == "text/plain;charset=UTF-8"
    assert await response.text() == "Hello world!"


async def test_text_decodes_like_js() -> None:
    assert await Response(b"caf\xe9 ok").text() == "caf\ufffd ok"
    assert await Response(b"\xef\xbb\xbf{\"a\": 1}").json() == {"a": 1}


async def test_bytes_body_has_no_content_type() -> None:
    response = Response(b"\x00\x01")
    assert response.headers.get("content-type") is None
    assert await response.bytes() == b"\x00\x01"


def test_caller_content_type_is_kept_for_str() -> None:
    response = Response("<p>", headers={"Content-Type": "text/html"})
    assert response.headers.get("content-type") == "text/html"


async def test_json_factory() -> None:
    response = Response.json({"obj": {"field": 123}}, status=404)
    assert response.status == 404
    assert response.headers.get("content-type") == "application/json"
    assert await response.text() == '{"obj": {"field": 123}}'


async def test_json_factory_keeps_caller_content_type() -> None:
    custom = Response.json([1], headers={"Content-Type": "application/vnd.api+json", "X-A": "1"})
    assert custom.headers.get("content-type") == "application/vnd.api+json"
    assert custom.headers.get("x-a") == "1"
    plain = Response.json("s", headers=[("content-type", "text/plain;charset=UTF-8")])
    assert plain.headers.get("content-type") == "text/plain;charset=UTF-8"
    assert await plain.text() == '"s"'


def test_from_json_alias_and_status_text() -> None:
    response = Response.from_json({"a": 1}, status=HTTPStatus.CREATED, status_text="Made")
    assert response.status == 201
    assert response.status_text == response.statusText == "Made"
    assert response.headers.get("content-type") == "application/json"


async def test_json_on_instance_reads_the_body() -> None:
    response = Response('{"a": {"b": [1, 2]}}')
    data = await response.json()
    assert data == {"a": {"b": [1, 2]}}
    assert isinstance(data, JsDict) and data.a.b == [1, 2]
    assert response.body_used


@pytest.mark.parametrize(
    ("body", "name"), [({"a": 1}, "dict"), ([1], "list"), (42, "int"), (iter([b"x"]), "list_iterator")]
)
def test_unsupported_body_type(body: object, name: str) -> None:
    with pytest.raises(TypeError, match=rf"^Unsupported type in Response: {name}"):
        Response(body)  # type: ignore[arg-type]


def test_dict_body_message_is_exact() -> None:
    with pytest.raises(TypeError) as error:
        Response({"a": 1})  # type: ignore[arg-type]
    assert str(error.value) == "Unsupported type in Response: dict"


def test_list_of_pairs_headers_with_duplicates() -> None:
    response = Response("x", headers=[("X-A", "1"), ("X-A", "2"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert response.headers.get("x-a") == "1, 2"
    assert response.headers.get_all("set-cookie") == ["a=1", "b=2"]


def test_headers_object_is_copied() -> None:
    headers = Headers({"X-A": "1"})
    response = Response("x", headers=headers)
    response.headers.set("X-A", "2")
    assert headers.get("x-a") == "1"
    assert "content-type" not in headers


@pytest.mark.parametrize(("status", "expected"), [(301, 301), (HTTPStatus.TEMPORARY_REDIRECT, 307), (308, 308)])
async def test_redirect(status: int, expected: int) -> None:
    response = Response.redirect("https://e.com/", status)
    assert response.status == expected
    assert response.headers.get("Location") == "https://e.com/"
    assert await response.bytes() == b""


def test_redirect_defaults_to_302() -> None:
    response = Response.redirect("https://e.com/next")
    assert (response.status, response.headers.get("location")) == (302, "https://e.com/next")


@pytest.mark.parametrize(("url", "status"), [("", HTTPStatus.BAD_GATEWAY), ("https://e.com/", 200), ("", 302)])
def test_invalid_redirect_is_value_error(url: str, status: int) -> None:
    with pytest.raises(ValueError):
        Response.redirect(url, status)


@pytest.mark.parametrize("status", [0, None])
def test_falsy_status_is_200(status: int | None) -> None:
    response = Response("x", status=status)
    assert response.status == 200
    assert response.status_text == "OK"


@pytest.mark.parametrize("status", [600, 199, 100, 1000])
def test_status_out_of_range_is_value_error(status: int) -> None:
    with pytest.raises(ValueError, match="200 to 599"):
        Response("x", status=status)


def test_status_101_only_with_web_socket() -> None:
    with pytest.raises(ValueError):
        Response(None, status=101)
    client, _server = WebSocketPair.new()
    response = Response(None, status=101, web_socket=client)
    assert response.status == 101
    assert response.web_socket is client is response.webSocket


@pytest.mark.parametrize("status", [204, 205, 304])
def test_null_body_status_with_body_is_type_error(status: int) -> None:
    with pytest.raises(TypeError, match=str(status)):
        Response("x", status=status)
    assert Response(None, status=status).status == status


async def test_streaming_body_is_read_back() -> None:
    response = Response(_chunks(b"a", b"", b"bc"), headers={"content-type": "text/event-stream"})
    assert response.headers.get("content-type") == "text/event-stream"
    assert await response.text() == "abc"
    with pytest.raises(OSError):
        await response.text()


async def test_body_stream_reader() -> None:
    response = Response(_chunks(b"one", b"two"))
    reader = response.body.getReader()
    assert await reader.read() == {"done": False, "value": b"one"}
    second = await reader.read()
    assert (second.done, second.value) == (False, b"two")
    assert (await reader.read()).done is True
    assert response.body_used


async def test_form_data_body_sets_multipart_type() -> None:
    form = FormData()
    form.append("name", "Ada")
    form.append("file", Blob(["content"], type="text/plain"), "a.txt")
    response = Response(form)
    content_type = response.headers.get("content-type")
    assert content_type.startswith("multipart/form-data; boundary=")
    parsed = await response.form_data()
    assert parsed.get("name") == "Ada"
    uploaded = parsed.get("file")
    assert isinstance(uploaded, File) and uploaded.name == "a.txt"
    assert await uploaded.text() == "content"


async def test_blob_body_sets_its_type() -> None:
    response = Response(Blob([b"\x89PNG", b"data"], type="image/png"))
    assert response.headers.get("content-type") == "image/png"
    assert await response.bytes() == b"\x89PNGdata"
    untyped = Response(Blob([b"x"]))
    assert untyped.headers.get("content-type") is None


async def test_blob_reader() -> None:
    response = Response(b"data", headers={"content-type": "application/octet-stream"})
    blob = await response.blob()
    assert (blob.size, blob.type) == (4, "application/octet-stream")
    assert await blob.bytes() == b"data"


async def test_response_from_response() -> None:
    original = Response("body", status=418, headers={"X-A": "1"})
    copy = Response(original)
    assert (copy.status, copy.headers.get("x-a")) == (418, "1")
    copy.headers.set("X-A", "2")
    assert original.headers.get("x-a") == "1"
    assert await copy.text() == "body"
    assert original.body_used


def test_response_from_response_with_options_is_value_error() -> None:
    with pytest.raises(ValueError):
        Response(Response("x"), status=201)


async def test_replace_body_keeps_status_and_headers() -> None:
    original = Response("old", status=404, status_text="Gone Fishing", headers={"X-A": "1"})
    replaced = original.replace_body("new")
    assert (replaced.status, replaced.status_text, replaced.headers.get("x-a")) == (404, "Gone Fishing", "1")
    assert await replaced.text() == "new"
    assert await original.text() == "old"


def test_raise_for_status() -> None:
    Response("fine").raise_for_status()
    Response.redirect("https://e.com/").raise_for_status()
    with pytest.raises(OSError, match="404 Client Error"):
        Response("missing", status=404).raise_for_status()
    with pytest.raises(OSError, match="503 Server Error"):
        Response("down", status=503).raise_for_status()


@pytest.mark.parametrize(("status", "ok"), [(200, True), (299, True), (302, False), (404, False), (500, False)])
def test_ok(status: int, ok: bool) -> None:
    assert Response(None, status=status).ok is ok


async def test_clone() -> None:
    response = Response("twice", status=201)
    clone = response.clone()
    assert clone.status == 201
    assert await clone.text() == "twice"
    assert await response.text() == "twice"
    with pytest.raises(OSError):
        response.clone()


def test_new_js_spelling() -> None:
    response = Response.new("x", {"status": 201, "statusText": "Yes", "headers": {"X-A": "1"}})
    assert (response.status, response.status_text, response.headers.get("x-a")) == (201, "Yes", "1")


def test_repr_and_aliases() -> None:
    assert repr(Response("x")) == "Response(status=200, content_type='text/plain;charset=UTF-8')"
    assert repr(Response(b"x", status=404)) == "Response(status=404, content_type=None)"
    response = Response("x")
    assert response.js_object is response is response.js_response
    assert FetchResponse is Response

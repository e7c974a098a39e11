"""``workers.Headers``: the Python (Mapping, ``get_all``) and JS (``has``/``set``/``append``) views agree."""

from __future__ import annotations

from workers import Headers


def test_get_is_case_insensitive() -> None:
    headers = Headers({"Content-Type": "application/json"})
    assert headers.get("content-type") == "application/json"
    assert headers.get("CONTENT-TYPE") == "application/json"
    assert headers["Content-type"] == "application/json"
    assert "CoNtEnT-TyPe" in headers


def test_missing_name_gives_none_or_default() -> None:
    headers = Headers()
    assert headers["x-missing"] is None
    assert headers.get("x-missing") is None
    assert headers.get("x-missing", "fallback") == "fallback"
    assert headers.get_all("x-missing") is None
    assert "x-missing" not in headers
    assert 42 not in headers


def test_repeated_names_are_comma_joined() -> None:
    headers = Headers([("Accept-Encoding", "deflate"), ("accept-encoding", "gzip")])
    assert headers.get("Accept-encoding") == "deflate, gzip"
    assert headers.get_all("Accept-encoding") == ["deflate, gzip"]
    assert len(headers) == 1


def test_set_cookie_values_stay_separate() -> None:
    headers = Headers([("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2"), ("X-A", "1"), ("X-A", "2")])
    assert headers.get_all("set-cookie") == ["a=1; Path=/", "b=2"]
    assert headers.getSetCookie() == ["a=1; Path=/", "b=2"]
    assert headers.raw_items() == [("set-cookie", "a=1; Path=/"), ("set-cookie", "b=2"), ("x-a", "1, 2")]


def test_js_has_set_append_delete() -> None:
    headers = Headers.new({"X-One": "1"})
    assert headers.has("x-one") and not headers.has("x-two")
    headers.append("X-One", "2")
    assert headers.get("x-one") == "1, 2"
    headers.set("x-one", "3")
    assert headers.get("X-One") == "3"
    headers.delete("X-ONE")
    assert not headers.has("x-one")
    assert len(headers) == 0
    headers.delete("never-there")  # deleting a missing name is a no-op, as in JS


def test_item_assignment_and_deletion() -> None:
    headers = Headers()
    headers["X-Key"] = "v"
    assert headers.get("x-key") == "v"
    del headers["x-KEY"]
    assert headers.get("x-key") is None


def test_construction_from_dict_pairs_and_headers() -> None:
    from_dict = Headers({"A": "1", "B": "2"})
    from_pairs = Headers([("A", "1"), ("B", "2")])
    from_lists = Headers([["A", "1"], ["B", "2"]])
    assert dict(from_dict.items()) == {"a": "1", "b": "2"}
    assert from_dict == from_pairs == from_lists
    assert sorted(from_dict) == ["a", "b"]


def test_construction_from_headers_keeps_set_cookie_separate() -> None:
    # `Response(upstream.body, headers=upstream.headers)` must not merge cookies into one line.
    original = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X", "1")])
    copy = Headers(original)
    assert copy.get_all("set-cookie") == ["a=1", "b=2"]
    assert copy.raw_items() == original.raw_items()
    copy.set("x", "changed")
    assert original.get("x") == "1"


def test_copy_is_independent() -> None:
    original = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    clone = original.copy()
    clone.append("set-cookie", "c=3")
    assert original.get_all("set-cookie") == ["a=1", "b=2"]
    assert clone.get_all("set-cookie") == ["a=1", "b=2", "c=3"]


def test_values_are_stripped_and_stringified() -> None:
    headers = Headers({"X-Pad": "  padded \t"})
    headers.append("X-Pad", " more ")
    headers.set("X-Num", 5)  # type: ignore[arg-type]
    assert headers.get("x-pad") == "padded, more"
    assert headers.get("x-num") == "5"


def test_from_raw_asgi_pairs() -> None:
    headers = Headers.from_raw([(b"host", b"example.com"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    assert headers.get("Host") == "example.com"
    assert headers.get("cookie") == "a=1, b=2"

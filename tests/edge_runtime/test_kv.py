"""env.<KV> in every call shape Cloudflare's Python SDK tests use: its results, paging, limits and messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from workers import BodyStream, JsDict, Response

from edge_runtime.bindings import OpenBindings, StateDir
from edge_runtime.bindings.kv import (
    MAX_VALUE_BYTES,
    STREAM_CHUNK_BYTES,
    KvNamespace,
    KVError,
    KVTypeError,
)
from kv_fixtures import NOW, spec


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# -- get: the four types, in every call shape ---------------------------------------------------------

async def test_put_and_get_text_overwrite_empty_and_missing(kv: KvNamespace) -> None:
    await kv.put("greeting", "hello from KV")
    assert await kv.get("greeting") == "hello from KV"
    await kv.put("greeting", "version2")
    assert await kv.get("greeting") == "version2"
    await kv.put("empty", "")
    assert await kv.get("empty") == ""
    assert await kv.get("missing") is None


@pytest.mark.parametrize("call", [
    lambda kv, key: kv.get(key, "json"),
    lambda kv, key: kv.get(key, type="json"),
    lambda kv, key: kv.get(key, type="json", cacheTtl=60),
    lambda kv, key: kv.get(key, {"type": "json", "cacheTtl": 60}),
], ids=["positional", "keyword", "keyword-cacheTtl", "dict"])
async def test_get_json_in_every_call_shape(kv: KvNamespace, call) -> None:
    await kv.put("doc", json.dumps({"message": "hello", "numbers": [1, 2, 3], "inner": {"x": 1}}))
    result = await call(kv, "doc")
    assert isinstance(result, JsDict) and result == {"message": "hello", "numbers": [1, 2, 3], "inner": {"x": 1}}
    assert result.message == "hello" and result.inner.x == 1
    assert await call(kv, "missing") is None


async def test_get_json_of_a_list_and_of_text_that_is_not_json(kv: KvNamespace) -> None:
    await kv.put("list", "[1, {\"a\": 2}]")
    assert await kv.get("list", "json") == [1, {"a": 2}]
    assert (await kv.get("list", "json"))[1].a == 2
    await kv.put("plain", "not json")
    with pytest.raises(ValueError, match="KV get\\('plain', \"json\"\\): the stored value is not JSON"):
        await kv.get("plain", "json")


@pytest.mark.parametrize("options", [("arrayBuffer",), ({"type": "arrayBuffer"},)], ids=["positional", "dict"])
async def test_get_array_buffer_gives_the_stored_bytes(kv: KvNamespace, options: tuple) -> None:
    await kv.put("bin", b"\x00\xffbinary")
    await kv.put("text", "héllo")
    result = await kv.get("bin", *options)
    assert isinstance(result, memoryview) and bytes(result) == b"\x00\xffbinary"
    assert await kv.get("text", type="arrayBuffer") == "héllo".encode()
    assert await kv.get("missing", *options) is None


async def test_get_stream_is_a_byte_stream_usable_as_a_response_body(kv: KvNamespace) -> None:
    big = bytes(range(256)) * (STREAM_CHUNK_BYTES // 128 + 3)  # more than two chunks
    await kv.put("big", big)
    stream = await kv.get("big", "stream")
    assert isinstance(stream, BodyStream)
    pieces = [piece async for piece in stream]
    assert len(pieces) == 3 and b"".join(pieces) == big
    with pytest.raises(OSError, match="can be read once"):
        [piece async for piece in stream]
    response = Response(await kv.get("big", type="stream"), headers={"content-type": "application/octet-stream"})
    assert await response.bytes() == big
    reader = (await kv.get("big", {"type": "stream"})).getReader()
    assert (await reader.read()).value == big[:STREAM_CHUNK_BYTES]
    assert await kv.get("missing", "stream") is None


async def test_get_text_decodes_bad_utf8_as_replacement_characters(kv: KvNamespace) -> None:
    await kv.put("bad", b"ok\xff")
    assert await kv.get("bad") == "ok\ufffd"


async def test_cache_ttl_of_at_least_60_is_accepted_and_less_is_refused(kv: KvNamespace) -> None:
    await kv.put("k", "v")
    assert await kv.get("k", cacheTtl=3600) == "v"
    with pytest.raises(KVError, match=r"^KV GET failed: 400 Invalid cache_ttl of 59. Cache TTL must be at least 60.$"):
        await kv.get("k", cacheTtl=59)
    with pytest.raises(KVError, match="Invalid cache_ttl of 10"):
        await kv.getWithMetadata("k", {"cacheTtl": 10})


@pytest.mark.parametrize("call", [
    lambda kv: kv.get("k", "blob"),
    lambda kv: kv.get("k", type="arraybuffer"),
    lambda kv: kv.getWithMetadata("k", {"type": "bytes"}),
])
async def test_an_unknown_type_is_a_type_error_listing_the_types(kv: KvNamespace, call) -> None:
    with pytest.raises(KVTypeError, match='Possible types are "text", "arrayBuffer", "json", and "stream"') as caught:
        await call(kv)
    assert isinstance(caught.value, TypeError)


async def test_an_unknown_option_or_a_bad_options_value_is_refused(kv: KvNamespace) -> None:
    with pytest.raises(TypeError, match="KV put\\(\\) has no option 'expirationTTL'; its options are expiration, "
                                        "expirationTtl, metadata"):
        await kv.put("k", "v", {"expirationTTL": 60})
    with pytest.raises(TypeError, match="KV list\\(\\) has no option 'start'"):
        await kv.list({"start": "a"})
    with pytest.raises(TypeError, match="KV get\\(\\) options must be a dict or None, got int 5"):
        await kv.get("k", 5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'ttl'"):
        await kv.put("k", "v", ttl=60)
    assert await kv.get("k") is None


# -- bulk get -----------------------------------------------------------------------------------------

async def test_bulk_get_returns_a_mapping_with_none_for_missing_keys(kv: KvNamespace) -> None:
    await kv.put("multi:a", "val-a")
    await kv.put("multi:b", "val-b")
    result = await kv.get(["multi:a", "multi:b", "multi:nonexistent"])
    assert isinstance(result, dict)
    assert result == {"multi:a": "val-a", "multi:b": "val-b", "multi:nonexistent": None}


async def test_bulk_get_json_in_positional_keyword_and_dict_form(kv: KvNamespace) -> None:
    await kv.put("a", json.dumps({"val": "a"}))
    await kv.put("b", json.dumps({"val": "b"}))
    for result in [await kv.get(["a", "b"], "json"), await kv.get(["a", "b"], type="json"),
                   await kv.get(["a", "b"], {"type": "json", "cacheTtl": 60})]:
        assert result["a"].val == "a" and result["b"]["val"] == "b"


async def test_bulk_get_takes_at_most_100_keys_and_only_text_or_json(kv: KvNamespace) -> None:
    assert await kv.get([f"k{i}" for i in range(100)]) == {f"k{i}": None for i in range(100)}
    with pytest.raises(KVError, match=r"^KV GET_BULK failed: 400 A bulk get takes at most 100 keys, got 101.$"):
        await kv.get([f"k{i}" for i in range(101)])
    for value_type in ("arrayBuffer", "stream"):
        with pytest.raises(KVTypeError, match=f'returns "text" or "json" values, not {value_type!r}'):
            await kv.get(["a"], value_type)
    with pytest.raises(KVError, match="KV GET_BULK failed: 400 Key names must not be empty"):
        await kv.get(["a", ""])


async def test_bulk_get_with_metadata(kv: KvNamespace) -> None:
    await kv.put("a", json.dumps([1]), metadata={"tag": "x"})
    result = await kv.getWithMetadata(["a", "b"], "json")
    assert result == {"a": {"value": [1], "metadata": {"tag": "x"}, "cacheStatus": None},
                      "b": {"value": None, "metadata": None, "cacheStatus": None}}
    assert result["a"].metadata.tag == "x"


# -- getWithMetadata and put's options ---------------------------------------------------------------

async def test_put_metadata_as_keyword_and_as_dict(kv: KvNamespace) -> None:
    await kv.put("kw", "metadata test", metadata={"author": "test-suite", "version": 2})
    await kv.put("dict", "dict meta", {"metadata": {"source": "dict"}})
    result = await kv.getWithMetadata("kw")
    assert isinstance(result, JsDict)
    assert result == {"value": "metadata test", "metadata": {"author": "test-suite", "version": 2},
                      "cacheStatus": None}
    assert result.value == "metadata test" and result.metadata.author == "test-suite" and result.cacheStatus is None
    assert (await kv.getWithMetadata("dict", "text")).metadata.source == "dict"
    assert await kv.getWithMetadata("missing") == {"value": None, "metadata": None, "cacheStatus": None}


async def test_get_with_metadata_takes_a_type(kv: KvNamespace) -> None:
    await kv.put("doc", '{"x": 1}', metadata={"m": 1})
    assert (await kv.getWithMetadata("doc", "json")).value.x == 1
    assert bytes((await kv.getWithMetadata("doc", type="arrayBuffer")).value) == b'{"x": 1}'
    stream = (await kv.getWithMetadata("doc", {"type": "stream"})).value
    assert b"".join([piece async for piece in stream]) == b'{"x": 1}'
    await kv.put("plain", "no metadata")
    assert (await kv.getWithMetadata("plain")).metadata is None


async def test_put_without_options_clears_the_old_metadata_and_expiry(kv: KvNamespace) -> None:
    await kv.put("k", "v1", expirationTtl=120, metadata={"old": True})
    await kv.put("k", "v2", None)
    assert await kv.getWithMetadata("k") == {"value": "v2", "metadata": None, "cacheStatus": None}
    assert (await kv.list())["keys"] == [{"name": "k"}]


async def test_put_takes_str_bytes_bytearray_memoryview_and_streams(kv: KvNamespace) -> None:
    await kv.put("str", "é")
    await kv.put("bytes", b"\x01\x02")
    await kv.put("bytearray", bytearray(b"ba"))
    await kv.put("memoryview", memoryview(b"xmvx")[1:3])
    await kv.put("generator", chunks(b"ab", b"", b"cd"))
    await kv.put("body", BodyStream(chunks(b"body ", b"stream")))
    await kv.put("request", Response("from a response body").body)
    values = await kv.get(["str", "bytes", "bytearray", "memoryview", "generator", "body", "request"])
    assert values == {"str": "é", "bytes": "\x01\x02", "bytearray": "ba", "memoryview": "mv",
                      "generator": "abcd", "body": "body stream", "request": "from a response body"}
    with pytest.raises(TypeError, match="KV put\\(\\) value must be a str, bytes or a stream of bytes, got dict"):
        await kv.put("k", {"a": 1})
    with pytest.raises(TypeError, match="got int 5"):
        await kv.put("k", 5)


async def test_delete_removes_a_key_and_a_missing_key_is_fine(kv: KvNamespace) -> None:
    await kv.put("doomed", "to be deleted")
    await kv.delete("doomed")
    assert await kv.get("doomed") is None
    await kv.delete("never-there")
    with pytest.raises(KVError, match="KV DELETE failed: 400 Key names must not be empty"):
        await kv.delete("")


# -- list -----------------------------------------------------------------------------------------------

async def test_list_by_prefix_sorted_by_utf8_bytes(kv: KvNamespace) -> None:
    # U+FF21 sorts before U+1F600 in UTF-8 (and code points), after it in UTF-16 (JS string order)
    names = ["p:\U0001f600", "p:\uff21", "p:b", "p:a", "p:é", "q:a", "o:z", "p"]
    for name in names:
        await kv.put(name, "v")
    result = await kv.list(prefix="p:")
    assert isinstance(result, JsDict)
    assert [key.name for key in result["keys"]] == ["p:a", "p:b", "p:é", "p:\uff21", "p:\U0001f600"]
    assert result.list_complete is True and "cursor" not in result and result.cacheStatus is None
    everything = await kv.list()
    assert [key["name"] for key in everything["keys"]] == sorted(names, key=lambda name: name.encode())
    assert (await kv.list(prefix="nothing:")) == {"keys": [], "list_complete": True, "cacheStatus": None}


async def test_list_prefix_that_ends_in_the_last_code_point(kv: KvNamespace) -> None:
    for name in ["a\U0010ffff", "a\U0010ffffz", "a\U0010fffe", "b"]:
        await kv.put(name, "v")
    assert [key.name for key in (await kv.list(prefix="a\U0010ffff"))["keys"]] == ["a\U0010ffff", "a\U0010ffffz"]
    assert [key.name for key in (await kv.list(prefix="a"))["keys"]] == [
        "a\U0010fffe", "a\U0010ffff", "a\U0010ffffz"]


async def test_list_entries_carry_expiration_and_metadata_only_when_set(kv: KvNamespace) -> None:
    await kv.put("meta", "v", metadata={"tag": "listed"})
    await kv.put("ttl", "v", {"expirationTtl": 60})
    await kv.put("plain", "v")
    result = await kv.list(None)
    assert result["keys"] == [{"name": "meta", "metadata": {"tag": "listed"}}, {"name": "plain"},
                           {"name": "ttl", "expiration": int(NOW) + 60}]
    assert result["keys"][0].metadata.tag == "listed"


@pytest.mark.parametrize("paged", [
    lambda kv, cursor: kv.list(prefix="page:", limit=2, cursor=cursor),
    lambda kv, cursor: kv.list({"prefix": "page:", "limit": 2, **({"cursor": cursor} if cursor else {})}),
], ids=["keyword", "dict"])
async def test_list_pages_with_limit_and_cursor(kv: KvNamespace, paged) -> None:
    for i in range(5):
        await kv.put(f"page:{i:03d}", f"val-{i}")
    await kv.put("pagez", "outside the prefix")
    page1 = await paged(kv, None)
    assert [key.name for key in page1["keys"]] == ["page:000", "page:001"] and page1.list_complete is False
    assert isinstance(page1.cursor, str)
    page2 = await paged(kv, page1.cursor)
    assert [key.name for key in page2["keys"]] == ["page:002", "page:003"] and not page2.list_complete
    page3 = await paged(kv, page2.cursor)
    assert [key.name for key in page3["keys"]] == ["page:004"] and page3.list_complete and "cursor" not in page3


async def test_list_returns_1000_keys_by_default_and_at_most(kv: KvNamespace) -> None:
    await asyncio.gather(*(kv.put(f"k{i:04d}", "v") for i in range(1001)))
    first = await kv.list()
    assert len(first["keys"]) == 1000 and not first.list_complete
    rest = await kv.list(cursor=first.cursor, limit=1000)
    assert [key.name for key in rest["keys"]] == ["k1000"] and rest.list_complete


@pytest.mark.parametrize(("options", "message"), [
    ({"limit": 0}, "KV LIST failed: 400 Invalid key_count_limit of 0. Please specify an integer greater than 0."),
    ({"limit": 1001}, "KV LIST failed: 400 Invalid key_count_limit of 1001. Please specify an integer less than "
                      "or equal to 1000."),
    ({"prefix": "é" * 257}, "KV LIST failed: 414 UTF-8 encoded length of 514 exceeds key length limit of 512."),
    ({"cursor": "!!not a cursor!!"}, "KV LIST failed: 400 Invalid cursor '!!not a cursor!!'"),
])
async def test_list_refuses_bad_options(kv: KvNamespace, options: dict, message: str) -> None:
    with pytest.raises(KVError) as caught:
        await kv.list(options)
    assert str(caught.value).startswith(message)
    with pytest.raises(KVError) as caught:
        await kv.list(**options)
    assert str(caught.value).startswith(message)


async def test_list_limit_must_be_a_number(kv: KvNamespace) -> None:
    with pytest.raises(TypeError, match="KV list\\(\\) limit must be a number, got str '10'"):
        await kv.list(limit="10")


# -- Cloudflare's limits ------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "status", "detail"), [
    ("x" * 513, 414, "UTF-8 encoded length of 513 exceeds key length limit of 512."),
    ("é" * 257, 414, "UTF-8 encoded length of 514 exceeds key length limit of 512."),
    ("", 400, "Key names must not be empty"),
    (".", 400, 'Illegal key name ".". Please use a different name.'),
    ("..", 400, 'Illegal key name "..". Please use a different name.'),
])
async def test_bad_keys_are_refused_by_every_call(kv: KvNamespace, key: str, status: int, detail: str) -> None:
    for operation, call in [("PUT", kv.put(key, "v")), ("GET", kv.get(key)), ("GET", kv.getWithMetadata(key)),
                            ("DELETE", kv.delete(key))]:
        with pytest.raises(KVError) as caught:
            await call
        assert str(caught.value) == f"KV {operation} failed: {status} {detail}" and caught.value.status == status
    assert (await kv.list())["keys"] == []


async def test_a_key_of_exactly_512_bytes_is_fine(kv: KvNamespace) -> None:
    await kv.put("k" * 512, "v")
    assert await kv.get("k" * 512) == "v"


async def test_a_key_must_be_a_string(kv: KvNamespace) -> None:
    with pytest.raises(TypeError, match="KV PUT key must be a string .*got int 5"):
        await kv.put(5, "v")
    with pytest.raises(TypeError, match="KV GET key must be a string"):
        await kv.get(("a", "b"))


async def test_a_value_over_25_mib_is_refused_and_changes_nothing(kv: KvNamespace) -> None:
    await kv.put("k", "old")
    with pytest.raises(KVError, match=rf"^KV PUT failed: 413 Value length of {MAX_VALUE_BYTES + 1} exceeds limit "
                                      rf"of {MAX_VALUE_BYTES}.$"):
        await kv.put("k", b"x" * (MAX_VALUE_BYTES + 1))
    assert await kv.get("k") == "old"
    await kv.put("k", b"y" * MAX_VALUE_BYTES)  # exactly the limit is allowed
    assert len(await kv.get("k", "arrayBuffer")) == MAX_VALUE_BYTES


async def test_a_stream_over_25_mib_is_refused_while_reading_and_changes_nothing(kv: KvNamespace) -> None:
    chunk = b"z" * (1 << 20)
    pulled, closed = [], []

    async def endless() -> AsyncIterator[bytes]:
        try:
            for _ in range(100):  # 100 MiB if nobody stops reading
                pulled.append(1)
                yield chunk
        finally:
            closed.append(True)

    await kv.put("k", "old")
    with pytest.raises(KVError, match=r"^KV PUT failed: 413 Value length of at least 27262976 exceeds limit"):
        await kv.put("k", endless())
    assert len(pulled) == 26 and closed == [True]  # stopped at the chunk that passed 25 MiB, and closed the stream
    assert await kv.get("k") == "old"


async def test_metadata_over_1024_bytes_is_refused_and_changes_nothing(kv: KvNamespace) -> None:
    await kv.put("k", "old", metadata={"v": 1})
    fits = {"s": "x" * 1016}  # {"s":"..."} is 1024 bytes as JSON.stringify writes it
    await kv.put("fits", "v", metadata=fits)
    assert (await kv.getWithMetadata("fits")).metadata == fits
    with pytest.raises(KVError, match=r"^KV PUT failed: 413 Metadata length of 1025 exceeds limit of 1024.$"):
        await kv.put("k", "new", metadata={"s": "x" * 1017})
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        await kv.put("k", "new", {"metadata": {"when": object()}})
    assert await kv.getWithMetadata("k") == {"value": "old", "metadata": {"v": 1}, "cacheStatus": None}


async def test_the_binding_is_neither_iterable_nor_sized(kv: KvNamespace) -> None:
    with pytest.raises(TypeError, match="KvNamespace.*is not iterable"):
        for _ in kv:
            pass
    with pytest.raises(TypeError, match="KvNamespace.*has no len"):
        len(kv)


def test_open_bindings_opens_kv_namespaces(tmp_path: Path) -> None:
    declared = OpenBindings((spec(id="abc"),), StateDir(tmp_path))
    try:
        assert isinstance(declared.by_name["CACHE"], KvNamespace) and declared.unsupported == []
    finally:
        declared.close()

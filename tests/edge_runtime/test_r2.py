"""The R2 binding: Cloudflare's call shapes on blob files and a SQLite index, R2's objects, ranges,
conditions, checksums, listing and multipart uploads, bodies streamed through disk, many writers at
once, persistence across restarts, and a Worker on the edge storing and streaming files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from config_projects import BASE_TOML, make_project
from workers import Blob, Headers, JsDict, Request, Response

from edge_runtime.bindings import StateDir
from edge_runtime.bindings.r2 import R2Bucket, bucket_folder, open_binding
from edge_runtime.bindings.r2_objects import R2Object, R2ObjectBody
from edge_runtime.bindings.r2_options import MIN_PART_BYTES, R2Error, R2RangeError
from edge_runtime.config import BindingSpec, load_config
from edge_runtime.config_error import ConfigError
from edge_runtime.edge import Edge

SETTINGS = {"binding": "FILES", "bucket_name": "files"}
MiB = 1024 * 1024
Opener = Callable[..., R2Bucket]


@pytest.fixture
async def open_bucket(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[R2Bucket] = []

    def open_(settings: dict[str, str] = SETTINGS) -> R2Bucket:
        opened.append(open_binding(BindingSpec("r2_buckets", "FILES", settings), StateDir(tmp_path)))
        return opened[-1]

    yield open_
    for bucket in opened:
        bucket.close()


@pytest.fixture
async def bucket(open_bucket: Opener) -> R2Bucket:
    return open_bucket()


def folder(tmp_path: Path) -> Path:
    return tmp_path / "r2" / "files"


def stored_files(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """(blob files, incoming files) of the test bucket."""
    return sorted((folder(tmp_path) / "blobs").iterdir()), sorted((folder(tmp_path) / "incoming").iterdir())


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


# --- objects and bodies ----------------------------------------------------------------------------

async def test_put_then_head_and_get_give_r2_objects_with_cloudflares_fields(bucket: R2Bucket) -> None:
    before = datetime.now(UTC)
    put = await bucket.put("notes/hello.txt", "hello, world", httpMetadata={"contentType": "text/plain"},
                           customMetadata={"author": "ada"})
    md5 = hashlib.md5(b"hello, world").hexdigest()
    assert isinstance(put, R2Object) and not isinstance(put, R2ObjectBody)
    assert (put.key, put.size, put.etag, put.httpEtag, put.storageClass) == ("notes/hello.txt", 12, md5, f'"{md5}"',
                                                                              "Standard")
    assert put.uploaded.tzinfo is UTC and before - timedelta(seconds=1) <= put.uploaded \
        <= datetime.now(UTC)
    assert put.httpMetadata == {"contentType": "text/plain"} and put.customMetadata.author == "ada"
    assert put.checksums.md5 == bytes.fromhex(md5) and put.checksums.sha256 is None
    assert put.checksums.toJSON() == {"md5": md5} and len(put.version) == 32

    head = await bucket.head("notes/hello.txt")
    assert (head.key, head.version, head.etag, head.uploaded, head.range) == (put.key, put.version, md5,
                                                                             put.uploaded, None)
    got = await bucket.get("notes/hello.txt")
    assert isinstance(got, R2ObjectBody) and got.version == put.version and got.range == {"offset": 0, "length": 12}
    assert got.bodyUsed is False and await got.text() == "hello, world" and got.bodyUsed is True
    with pytest.raises(OSError, match="Body already used"):
        await got.text()
    assert await bucket.head("missing") is None and await bucket.get("missing") is None


async def test_a_body_reads_as_text_json_bytes_blob_or_a_stream(bucket: R2Bucket) -> None:
    await bucket.put("data.json", b'{"n": [1, 2]}', httpMetadata={"contentType": "application/json"})
    assert (await (await bucket.get("data.json")).json()).n == [1, 2]
    assert await (await bucket.get("data.json")).arrayBuffer() == b'{"n": [1, 2]}'
    blob = await (await bucket.get("data.json")).blob()
    assert isinstance(blob, Blob) and blob.type == "application/json" and await blob.bytes() == b'{"n": [1, 2]}'
    streamed = [chunk async for chunk in (await bucket.get("data.json")).body]
    assert streamed == [b'{"n": [1, 2]}']
    reader = (await bucket.get("data.json")).body.getReader()
    assert (await reader.read()).value == b'{"n": [1, 2]}' and (await reader.read()).done is True
    response = Response((await bucket.get("data.json")).body)
    assert await response.json() == {"n": [1, 2]}


@pytest.mark.parametrize("value, stored", [
    ("é", "é".encode()), (b"\x00\xff", b"\x00\xff"), (memoryview(b"view"), b"view"), (None, b""),
    (Blob(["a", b"b"]), b"ab"),
])
async def test_put_takes_str_bytes_none_and_blobs(bucket: R2Bucket, value: object, stored: bytes) -> None:
    put = await bucket.put("k", value)
    assert put.size == len(stored) and put.etag == hashlib.md5(stored).hexdigest()
    assert await (await bucket.get("k")).arrayBuffer() == stored


async def test_put_streams_request_and_response_bodies_and_async_iterables(bucket: R2Bucket) -> None:
    request = Request("https://edge.test/upload", method="PUT", body=chunks(b"from ", b"a request"))
    await bucket.put("request", request.body)
    await bucket.put("response", Response("from a response").body)
    await bucket.put("generator", chunks(b"one ", "two ", bytearray(b"three")))
    assert [await (await bucket.get(key)).text() for key in ("request", "response", "generator")] == [
        "from a request", "from a response", "one two three"]


async def test_put_refuses_values_that_are_not_bodies(bucket: R2Bucket, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"pass request.body"):
        await bucket.put("k", Request("https://edge.test/", method="POST", body="x"))
    with pytest.raises(TypeError, match="value must be a str, bytes, None, a Blob or a stream of bytes"):
        await bucket.put("k", 42)
    with pytest.raises(TypeError, match="stream gave int 7"):
        await bucket.put("k", chunks(b"ok", 7))  # type: ignore[arg-type]
    assert await bucket.head("k") is None and stored_files(tmp_path) == ([], [])


async def test_write_http_metadata_sets_headers_from_a_dict_or_request_headers(bucket: R2Bucket) -> None:
    expiry = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    await bucket.put("page", "<p>", httpMetadata={"contentType": "text/html", "cacheControl": "max-age=60",
                                                   "contentLanguage": "en", "cacheExpiry": expiry})
    headers = Headers({"x-kept": "1"})
    page = await bucket.head("page")
    page.writeHttpMetadata(headers)
    assert dict(headers) == {"x-kept": "1", "content-type": "text/html", "cache-control": "max-age=60",
                             "content-language": "en", "expires": "Wed, 02 Jan 2030 03:04:05 GMT"}
    assert page.httpMetadata.cacheExpiry == expiry
    plain: dict[str, str] = {}
    page.writeHttpMetadata(plain)
    assert plain["content-type"] == "text/html"

    incoming = Headers({"Content-Type": "image/png", "Content-Disposition": "inline", "X-Other": "dropped",
                        "Expires": "Wed, 02 Jan 2030 03:04:05 GMT"})
    from_headers = await bucket.put("image", b"\x89PNG", httpMetadata=incoming)
    assert from_headers.httpMetadata == {"contentType": "image/png", "contentDisposition": "inline",
                                         "cacheExpiry": expiry}
    with pytest.raises(TypeError, match="httpMetadata has no field 'content_type'"):
        await bucket.put("image", b"", httpMetadata={"content_type": "x"})


async def test_options_come_as_keywords_or_a_dict_and_unknown_ones_are_refused(bucket: R2Bucket) -> None:
    await bucket.put("k", "value", {"customMetadata": {"a": "1"}}, httpMetadata={"contentType": "text/plain"})
    got = await bucket.get("k", {"range": {"offset": 1}})
    assert await got.text() == "alue" and got.customMetadata == {"a": "1"} and got.httpMetadata.contentType == "text/plain"
    with pytest.raises(TypeError, match="R2 put\\(\\) has no option 'httpMetaData'"):
        await bucket.put("k", "v", {"httpMetaData": {}})
    with pytest.raises(TypeError, match="customMetadata must be a dict of strings to strings"):
        await bucket.put("k", "v", customMetadata={"n": 1})
    with pytest.raises(R2Error, match=r"put: Your metadata headers exceed .* \(10012\)"):
        await bucket.put("k", "v", customMetadata={"big": "x" * 8200})
    assert (await bucket.head("k")).customMetadata == {"a": "1"}  # refused calls changed nothing


# --- ranges and conditions -------------------------------------------------------------------------

@pytest.mark.parametrize("wanted, text, offset, length", [
    ({"offset": 2, "length": 3}, "234", 2, 3), ({"offset": 7}, "789", 7, 3), ({"suffix": 4}, "6789", 6, 4),
    ({"length": 2}, "01", 0, 2), ({"suffix": 50}, "0123456789", 0, 10), ({"offset": 8, "length": 50}, "89", 8, 2),
    (Headers({"Range": "bytes=1-3"}), "123", 1, 3), (Headers({"Range": "bytes=-2"}), "89", 8, 2),
    (Headers({"Range": "bytes=5-"}), "56789", 5, 5), (Headers(), "0123456789", 0, 10),
])
async def test_get_serves_a_range(bucket: R2Bucket, wanted: object, text: str, offset: int, length: int) -> None:
    await bucket.put("digits", "0123456789")
    got = await bucket.get("digits", range=wanted)
    assert await got.text() == text and got.range == {"offset": offset, "length": length} and got.size == 10


@pytest.mark.parametrize("wanted, message", [
    ({"offset": 10}, r"get: The requested range is not satisfiable: offset 10 .* \(10039\)"),
    ({"offset": -1}, "offset \\(-1\\) must be greater than or equal to 0"),
    ({"suffix": 2, "offset": 1}, "suffix is incompatible with offset and length"),
    ({"length": 1.5}, "length must be a whole number"),
    ({}, "give offset, length, or suffix"),
    (Headers({"Range": "bytes=0-1,4-5"}), "R2 serves one range"),
    (Headers({"Range": "bytes=5-1"}), "ends before it starts"),
])
async def test_a_bad_range_is_an_error(bucket: R2Bucket, wanted: object, message: str) -> None:
    await bucket.put("digits", "0123456789")
    with pytest.raises(R2RangeError, match=message):
        await bucket.get("digits", range=wanted)
    with pytest.raises(TypeError, match="range has no field 'start'"):
        await bucket.get("digits", range={"start": 1})


async def test_get_only_if_gives_the_object_without_a_body_when_the_condition_fails(bucket: R2Bucket) -> None:
    put = await bucket.put("k", "value")
    later, earlier = put.uploaded + timedelta(seconds=5), put.uploaded - timedelta(seconds=5)
    failing = [{"etagMatches": "0" * 32}, {"etagDoesNotMatch": put.etag}, {"etagDoesNotMatch": "*"},
               {"uploadedAfter": later}, {"uploadedBefore": earlier},
               Headers({"If-None-Match": put.httpEtag}), Headers({"If-Match": '"other", W/"more"'}),
               Headers({"If-Modified-Since": "Tue, 01 Jan 2030 00:00:00 GMT"})]
    for condition in failing:
        got = await bucket.get("k", onlyIf=condition)
        assert type(got) is R2Object and got.etag == put.etag, condition
    passing = [{"etagMatches": put.etag}, {"etagMatches": [put.httpEtag, "x"]}, {"etagMatches": "*"},
               {"etagDoesNotMatch": "0" * 32}, {"uploadedAfter": earlier}, {"uploadedBefore": later},
               Headers({"If-Match": put.httpEtag}), Headers({"If-None-Match": '"nope"'}),
               Headers({"If-Unmodified-Since": "Tue, 01 Jan 2030 00:00:00 GMT"})]
    for condition in passing:
        got = await bucket.get("k", onlyIf=condition)
        assert isinstance(got, R2ObjectBody) and await got.text() == "value", condition
    assert await bucket.get("missing", onlyIf={"etagMatches": "*"}) is None
    with pytest.raises(TypeError, match="onlyIf has no field 'etag'"):
        await bucket.get("k", onlyIf={"etag": put.etag})


async def test_put_only_if_stores_nothing_and_gives_none_when_the_condition_fails(
        bucket: R2Bucket, tmp_path: Path) -> None:
    first = await bucket.put("k", "first")
    assert await bucket.put("k", "second", onlyIf={"etagMatches": "0" * 32}) is None
    assert await bucket.put("k", "second", onlyIf={"etagDoesNotMatch": "*"}) is None  # create-only
    assert await bucket.put("new", "x", onlyIf={"etagMatches": "*"}) is None  # nothing to match
    assert (await bucket.head("k")).version == first.version and await bucket.head("new") is None
    second = await bucket.put("k", "second", onlyIf={"etagMatches": first.etag})
    assert await (await bucket.get("k")).text() == "second" and second.version != first.version
    assert await bucket.put("fresh", "x", onlyIf={"etagDoesNotMatch": "*"}) is not None
    blobs, incoming = stored_files(tmp_path)
    assert len(blobs) == 2 and incoming == []  # the replaced and the refused bodies are gone


# --- checksums -------------------------------------------------------------------------------------

async def test_a_given_checksum_is_checked_and_kept(bucket: R2Bucket) -> None:
    data = b"checked"
    with_md5 = await bucket.put("a", data, md5=hashlib.md5(data).hexdigest())
    assert with_md5.etag == hashlib.md5(data).hexdigest()
    with_sha = await bucket.put("b", chunks(data[:3], data[3:]), sha256=hashlib.sha256(data).digest())
    assert with_sha.checksums.sha256 == hashlib.sha256(data).digest()
    assert with_sha.checksums.toJSON() == {"md5": hashlib.md5(data).hexdigest(),
                                           "sha256": hashlib.sha256(data).hexdigest()}
    assert (await bucket.head("b")).checksums.sha256 == hashlib.sha256(data).digest()
    with_sha512 = await bucket.put("c", data, {"sha512": memoryview(hashlib.sha512(data).digest())})
    assert with_sha512.checksums.sha512 == hashlib.sha512(data).digest()


@pytest.mark.parametrize("hashes, message", [
    ({"md5": hashlib.md5(b"other").hexdigest()}, r"put: The Content-MD5 you specified did not match .* \(10037\)"),
    ({"sha1": hashlib.sha1(b"other").digest()}, r"put: The SHA-1 you specified did not match"),
    ({"sha384": hashlib.sha384(b"other").hexdigest()}, r"put: The SHA-384 you specified did not match"),
])
async def test_a_wrong_checksum_is_an_error_and_stores_nothing(
        bucket: R2Bucket, tmp_path: Path, hashes: dict[str, object], message: str) -> None:
    original = await bucket.put("k", "original")
    with pytest.raises(R2Error, match=message) as caught:
        await bucket.put("k", chunks(b"new ", b"data"), **hashes)
    assert caught.value.code == 10037
    assert (await bucket.head("k")).version == original.version and await (await bucket.get("k")).text() == "original"
    blobs, incoming = stored_files(tmp_path)
    assert len(blobs) == 1 and incoming == []


async def test_checksums_of_the_wrong_shape_are_refused(bucket: R2Bucket) -> None:
    with pytest.raises(TypeError, match="You cannot specify multiple hashing algorithms"):
        await bucket.put("k", "v", md5=hashlib.md5(b"v").hexdigest(), sha1=hashlib.sha1(b"v").hexdigest())
    with pytest.raises(TypeError, match="md5 must be 16 bytes or 32 hex digits"):
        await bucket.put("k", "v", md5="abc")
    assert await bucket.head("k") is None


# --- keys, delete, list ----------------------------------------------------------------------------

async def test_keys_may_hold_any_characters_and_never_name_a_file(bucket: R2Bucket, tmp_path: Path) -> None:
    keys = ["../../escape", "/", "..", "a/../../b", "dir/", "ünï\x00code 🙂", "k" * 1024, ""]
    for key in keys:
        await bucket.put(key, key)
    for key in keys:
        assert await (await bucket.get(key)).text() == key
    inside = {path.relative_to(tmp_path) for path in tmp_path.rglob("*")}
    assert all(path.parts[:2] == ("r2", "files") for path in inside - {Path("r2")})
    blobs, _ = stored_files(tmp_path)
    assert len(blobs) == len(keys) and all(len(blob.name) == 32 for blob in blobs)


async def test_a_key_over_1024_bytes_is_refused(bucket: R2Bucket) -> None:
    for call in (bucket.head, bucket.get, bucket.delete, lambda key: bucket.put(key, "v"),
                 bucket.createMultipartUpload):
        with pytest.raises(R2Error, match=r"The specified object name is not valid: .* 1026 bytes.* \(10020\)"):
            await call("é" * 513)
    with pytest.raises(TypeError, match="key must be a string"):
        await bucket.get(b"bytes")  # type: ignore[arg-type]


async def test_delete_takes_a_key_or_up_to_1000_keys(bucket: R2Bucket, tmp_path: Path) -> None:
    for key in ("a", "b", "c", "d"):
        await bucket.put(key, key)
    await bucket.delete("a")
    await bucket.delete(["b", "c", "never-stored"])
    await bucket.delete([])
    assert [obj.key for obj in (await bucket.list()).objects] == ["d"]
    assert len(stored_files(tmp_path)[0]) == 1
    with pytest.raises(R2Error, match="delete: A delete takes at most 1000 keys, got 1001"):
        await bucket.delete(["d"] * 1001)
    with pytest.raises(R2Error, match="10020"):
        await bucket.delete(["d", "x" * 1025])
    assert await bucket.head("d") is not None  # a refused delete deletes nothing


async def test_list_is_sorted_by_utf8_bytes_with_prefix_delimiter_and_start_after(bucket: R2Bucket) -> None:
    keys = ["b", "a/1", "a/2/x", "a/2/y", "a/3", "\U0001f642", "\uffff", "a", "c/d"]
    for key in keys:
        await bucket.put(key, key, httpMetadata={"contentType": "text/plain"}, customMetadata={"k": key})
    listed = await bucket.list()
    assert isinstance(listed, JsDict) and listed.truncated is False and "cursor" not in listed
    assert [obj.key for obj in listed.objects] == sorted(keys, key=str.encode)
    assert listed.objects[0].httpMetadata == {} and listed.objects[0].customMetadata == {}  # not included
    assert listed.delimitedPrefixes == []

    folders = await bucket.list(prefix="a/", delimiter="/", include=["httpMetadata", "customMetadata"])
    assert [obj.key for obj in folders.objects] == ["a/1", "a/3"] and folders.delimitedPrefixes == ["a/2/"]
    assert folders.objects[0].customMetadata == {"k": "a/1"} and folders.objects[0].httpMetadata.contentType
    top = await bucket.list(delimiter="/")
    assert [obj.key for obj in top.objects] == ["a", "b", "\uffff", "\U0001f642"]
    assert top.delimitedPrefixes == ["a/", "c/"]
    after = await bucket.list(startAfter="a/2/x")
    assert [obj.key for obj in after.objects][:3] == ["a/2/y", "a/3", "b"]


async def test_list_pages_with_a_cursor_counting_delimited_prefixes(bucket: R2Bucket) -> None:
    for key in ["a", "d/1", "d/2", "e", "f/1", "g"]:
        await bucket.put(key, "")
    pages, cursor = [], None
    while True:
        page = await bucket.list(delimiter="/", limit=2, cursor=cursor)
        pages.append([obj.key for obj in page.objects] + page.delimitedPrefixes)
        if not page.truncated:
            break
        cursor = page.cursor
    assert pages == [["a", "d/"], ["e", "f/"], ["g"]]
    with pytest.raises(R2Error, match="Invalid cursor 'nonsense'"):
        await bucket.list(cursor="nonsense")


async def test_list_gives_at_most_1000_objects(bucket: R2Bucket) -> None:
    await asyncio.gather(*(bucket.put(f"key-{number:04d}", b"") for number in range(1001)))
    first = await bucket.list()
    assert len(first.objects) == 1000 and first.truncated is True and first.objects[-1].key == "key-0999"
    rest = await bucket.list(cursor=first.cursor)
    assert [obj.key for obj in rest.objects] == ["key-1000"] and rest.truncated is False
    with pytest.raises(R2Error, match=r"list: MaxKeys params must be less than or equal to 1000.* \(10022\)"):
        await bucket.list(limit=1001)
    with pytest.raises(R2Error, match="MaxKeys params must be positive"):
        await bucket.list(limit=0)
    with pytest.raises(TypeError, match="include must be a list of httpMetadata and customMetadata"):
        await bucket.list(include=["metadata"])


# --- multipart uploads -----------------------------------------------------------------------------

async def test_a_multipart_upload_joins_its_parts_with_an_s3_etag(bucket: R2Bucket, tmp_path: Path) -> None:
    upload = await bucket.createMultipartUpload("big.bin", httpMetadata={"contentType": "application/zip"},
                                                customMetadata={"from": "parts"})
    assert upload.key == "big.bin" and isinstance(upload.uploadId, str)
    first, second, last = b"a" * MIN_PART_BYTES, b"b" * MIN_PART_BYTES, b"tail"
    part_3 = await upload.uploadPart(3, last)
    part_1 = await upload.uploadPart(1, chunks(first[:1000], first[1000:]))
    await upload.uploadPart(2, b"replaced below")
    part_2 = await upload.uploadPart(2, second)
    assert part_1 == {"partNumber": 1, "etag": hashlib.md5(first).hexdigest()} and part_2.partNumber == 2
    assert await bucket.head("big.bin") is None  # nothing until complete

    done = await upload.complete([part_3, part_1, part_2])
    s3_etag = hashlib.md5(b"".join(hashlib.md5(part).digest() for part in (first, second, last))).hexdigest()
    assert done.etag == f"{s3_etag}-3" and done.httpEtag == f'"{s3_etag}-3"' and done.size == 2 * MIN_PART_BYTES + 4
    assert done.httpMetadata == {"contentType": "application/zip"} and done.customMetadata == {"from": "parts"}
    got = await bucket.get("big.bin", range={"offset": MIN_PART_BYTES - 2, "length": 4})
    assert await got.text() == "aabb" and got.etag == done.etag
    assert hashlib.md5(await (await bucket.get("big.bin")).arrayBuffer()).hexdigest() == \
        hashlib.md5(first + second + last).hexdigest()
    blobs, incoming = stored_files(tmp_path)
    assert len(blobs) == 1 and incoming == []  # the parts are gone once joined
    with pytest.raises(R2Error, match=r"uploadPart: The specified multipart upload does not exist. \(10024\)"):
        await upload.uploadPart(4, b"late")


async def test_an_upload_is_resumed_by_id_even_after_a_restart(open_bucket: Opener) -> None:
    upload = await open_bucket().createMultipartUpload("resumed")
    part_1 = await upload.uploadPart(1, b"x" * MIN_PART_BYTES)
    reopened = open_bucket()
    resumed = reopened.resumeMultipartUpload("resumed", upload.uploadId)
    part_2 = await resumed.uploadPart(2, b"end")
    done = await resumed.complete([part_1, part_2])
    assert done.size == MIN_PART_BYTES + 3 and (await reopened.head("resumed")).etag.endswith("-2")
    with pytest.raises(R2Error, match="10024"):
        await reopened.resumeMultipartUpload("resumed", "no-such-upload").uploadPart(1, b"")
    with pytest.raises(R2Error, match="10024"):  # an upload belongs to its key
        await reopened.resumeMultipartUpload("other-key", upload.uploadId).abort()


async def test_complete_refuses_unknown_parts_and_badly_sized_parts(bucket: R2Bucket) -> None:
    upload = await bucket.createMultipartUpload("k")
    small = await upload.uploadPart(1, b"small")
    full = await upload.uploadPart(2, b"f" * MIN_PART_BYTES)
    bigger = await upload.uploadPart(3, b"g" * (MIN_PART_BYTES + 1))
    last = await upload.uploadPart(4, b"end")
    with pytest.raises(R2Error, match=r"One or more of the specified parts could not be found .* \(10025\)"):
        await upload.complete([{"partNumber": 2, "etag": "0" * 32}, last])
    with pytest.raises(R2Error, match=r"could not be found \(part 9"):
        await upload.complete([{"partNumber": 9, "etag": last.etag}])
    with pytest.raises(R2Error, match=r"smaller than the minimum allowed object size: part 1 .* \(10011\)"):
        await upload.complete([small, last])
    with pytest.raises(R2Error, match=r"all non-trailing parts must have the same length. \(10048\)"):
        await upload.complete([full, bigger, last])
    with pytest.raises(R2Error, match="a part number is listed twice"):
        await upload.complete([full, full])
    with pytest.raises(TypeError, match="the list of parts uploadPart returned"):
        await upload.complete([])
    assert await bucket.head("k") is None
    assert await upload.complete([full, last]) is not None  # the upload survived the refusals


@pytest.mark.parametrize("number", [0, 10001, -1, 1.0, True])
async def test_a_part_number_outside_1_to_10000_is_refused(bucket: R2Bucket, number: object) -> None:
    upload = await bucket.createMultipartUpload("k")
    with pytest.raises(R2Error, match="Part number must be between 1 and 10000"):
        await upload.uploadPart(number, b"data")  # type: ignore[arg-type]


async def test_abort_drops_the_parts_and_the_upload(bucket: R2Bucket, tmp_path: Path) -> None:
    upload = await bucket.createMultipartUpload("k")
    part = await upload.uploadPart(1, b"data")
    assert len(stored_files(tmp_path)[0]) == 1
    await upload.abort()
    assert stored_files(tmp_path) == ([], [])
    with pytest.raises(R2Error, match=r"completeMultipartUpload: The specified multipart upload does not exist"):
        await upload.complete([part])
    with pytest.raises(R2Error, match=r"abortMultipartUpload: .* \(10024\)"):
        await upload.abort()


# --- large bodies go through disk, not memory --------------------------------------------------------

async def test_a_20_mib_body_streams_in_and_out_without_being_held_in_memory(
        bucket: R2Bucket, tmp_path: Path) -> None:
    chunk_bytes, num_chunks = 64 * 1024, 320
    sent = hashlib.md5()

    async def produce() -> AsyncIterator[bytes]:
        for number in range(num_chunks):
            chunk = number.to_bytes(4, "big") * (chunk_bytes // 4)
            sent.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        put = await bucket.put("large", produce())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = await bucket.get("large")
        received, num_received = hashlib.md5(), 0
        async for chunk in got.body:
            received.update(chunk)
            num_received += 1
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body_bytes = chunk_bytes * num_chunks
    assert put.size == body_bytes and put.etag == sent.hexdigest() == received.hexdigest()
    assert num_received >= body_bytes // (64 * 1024)
    assert (folder(tmp_path) / "blobs" / next((folder(tmp_path) / "blobs").iterdir()).name).stat().st_size \
        == body_bytes
    assert put_peak < 4 * MiB and get_peak < 2 * MiB, (put_peak, get_peak)  # far below the 20 MiB body


async def test_an_unread_body_releases_its_file(bucket: R2Bucket) -> None:
    await bucket.put("k", "v")
    got = await bucket.get("k")
    file = got._chunks._file  # type: ignore[union-attr]
    del got
    assert file.closed


# --- many writers, restarts ----------------------------------------------------------------------------

async def test_six_pops_of_fifty_writers_lose_nothing(open_bucket: Opener, tmp_path: Path) -> None:
    pops = [open_bucket() for _ in range(6)]  # as many bindings on one folder as separate processes would open

    async def write(pop: int, writer: int) -> None:
        await pops[pop].put(f"pop-{pop}/writer-{writer:02d}", chunks(f"{pop}:".encode(), f"{writer}".encode()))

    await asyncio.gather(*(write(pop, writer) for pop in range(6) for writer in range(50)))
    listed = await pops[0].list()
    assert len(listed.objects) == 300 and listed.truncated is False
    for pop in range(6):
        assert await (await pops[5 - pop].get(f"pop-{pop}/writer-49")).text() == f"{pop}:49"
    assert min(obj.size for obj in listed.objects) >= 3
    assert len(stored_files(tmp_path)[0]) == 300


async def test_concurrent_puts_to_one_key_leave_one_whole_object(open_bucket: Opener, tmp_path: Path) -> None:
    pops = [open_bucket() for _ in range(3)]
    bodies = [bytes([number]) * (256 * 1024 + number) for number in range(12)]

    async def write(number: int) -> None:
        body = bodies[number]
        await pops[number % 3].put("same", chunks(body[:100_000], body[100_000:]))

    await asyncio.gather(*(write(number) for number in range(12)))
    got = await pops[1].get("same")
    data = await got.arrayBuffer()
    assert data in bodies and got.size == len(data) and got.etag == hashlib.md5(data).hexdigest()
    assert len(stored_files(tmp_path)[0]) == 1 and stored_files(tmp_path)[1] == []


async def test_objects_survive_close_and_reopen(open_bucket: Opener) -> None:
    first = open_bucket()
    put = await first.put("kept", "across restarts", customMetadata={"v": "1"})
    first.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await first.head("kept")
    reopened = open_bucket()
    got = await reopened.get("kept")
    assert await got.text() == "across restarts" and got.version == put.version and got.uploaded == put.uploaded


def test_the_bucket_lives_under_its_name_and_jurisdiction(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert bucket_folder(state, "files") == tmp_path / "r2" / "files"
    assert bucket_folder(state, "files", "eu") == tmp_path / "r2" / "files.eu"
    with pytest.raises(ConfigError, match="bucket_name must be 3 to 63 lower-case letters"):
        open_binding(BindingSpec("r2_buckets", "FILES", {"binding": "FILES", "bucket_name": "My_Files"}), state)
    with pytest.raises(ConfigError, match="bucket_name must be"):
        open_binding(BindingSpec("r2_buckets", "FILES", {"binding": "FILES"}), state)
    with pytest.raises(ConfigError, match="jurisdiction must be one of eu, fedramp"):
        open_binding(BindingSpec("r2_buckets", "FILES", {**SETTINGS, "jurisdiction": "mars"}), state)


# --- end to end: a Worker on the edge, then a restart -------------------------------------------------

FILES_WORKER = """\
from urllib.parse import urlsplit
from workers import Headers, Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        key = urlsplit(request.url).path[1:]
        if request.method == "PUT":
            stored = await self.env.FILES.put(key, request.body, httpMetadata=request.headers,
                                              customMetadata={"by": "worker"})
            return Response.json({"key": stored.key, "size": stored.size, "etag": stored.etag})
        if request.method == "DELETE":
            await self.env.FILES.delete(key)
            return Response(None, status=204)
        if key == "":
            listed = await self.env.FILES.list(include=["customMetadata"])
            return Response.json([[obj.key, obj.size, obj.customMetadata["by"]] for obj in listed.objects])
        obj = await self.env.FILES.get(key, range=request.headers)
        if obj is None:
            return Response("no such file", status=404)
        headers = Headers()
        obj.writeHttpMetadata(headers)
        headers.set("etag", obj.httpEtag)
        return Response(obj.body, headers=headers)
"""

FILES_TOML = BASE_TOML + """
[[r2_buckets]]
binding = "FILES"
bucket_name = "files"
"""


async def call_edge(project: Path, requests: list[tuple[str, str, dict[str, object]]]) -> list[httpx.Response]:
    edge = Edge(load_config(project))
    try:
        transport = httpx.ASGITransport(app=edge.front_door)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return [await client.request(method, path, **options) for method, path, options in requests]
    finally:
        await edge.aclose()


async def test_a_worker_stores_request_bodies_and_streams_them_back_after_a_restart(tmp_path: Path) -> None:
    project = make_project(tmp_path, {"wrangler.toml": FILES_TOML, "src/entry.py": FILES_WORKER})
    photo = bytes(range(256)) * 4096  # 1 MiB

    async def upload() -> AsyncIterator[bytes]:
        for start in range(0, len(photo), 100_000):
            yield photo[start:start + 100_000]

    stored, fetched, missing = await call_edge(project, [
        ("PUT", "/photos/cat.bin", {"content": upload(), "headers": {"content-type": "image/x-cat"}}),
        ("GET", "/photos/cat.bin", {}),
        ("GET", "/photos/dog.bin", {})])
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"key": "photos/cat.bin", "size": len(photo), "etag": hashlib.md5(photo).hexdigest()}
    assert fetched.status_code == 200 and fetched.content == photo
    assert fetched.headers["content-type"] == "image/x-cat"
    assert fetched.headers["etag"] == f'"{hashlib.md5(photo).hexdigest()}"'
    assert missing.status_code == 404
    assert (tmp_path / ".wrangler" / "state" / "v3" / "r2" / "files" / "index.sqlite").is_file()

    listed, ranged, deleted, gone = await call_edge(project, [
        ("GET", "/", {}), ("GET", "/photos/cat.bin", {"headers": {"range": "bytes=256-259"}}),
        ("DELETE", "/photos/cat.bin", {}), ("GET", "/photos/cat.bin", {})])
    assert listed.json() == [["photos/cat.bin", len(photo), "worker"]]
    assert ranged.content == bytes([0, 1, 2, 3]) and ranged.headers["content-type"] == "image/x-cat"
    assert deleted.status_code == 204 and gone.status_code == 404
    assert json.loads(listed.text)[0][0] == "photos/cat.bin"

"""The R2 binding in Cloudflare's call shapes: objects and bodies, keys, delete, listing and multipart uploads."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from r2_fixtures import Opener, chunks, stored_files
from workers import Blob, Headers, JsDict, Request, Response

from edge_runtime.bindings.r2 import R2Bucket
from edge_runtime.bindings.r2_objects import R2Object, R2ObjectBody
from edge_runtime.bindings.r2_options import MIN_PART_BYTES, R2Error


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

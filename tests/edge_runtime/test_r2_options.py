"""R2's get and put options: ranges, onlyIf conditions and checksums."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from r2_fixtures import chunks, stored_files
from workers import Headers

from edge_runtime.bindings.r2 import R2Bucket
from edge_runtime.bindings.r2_objects import R2Object, R2ObjectBody
from edge_runtime.bindings.r2_options import R2Error, R2RangeError


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

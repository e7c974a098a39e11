"""The `r2_buckets` binding: R2's `head`, `get`, `put`, `delete`, `list` and multipart uploads, with
Cloudflare's call shapes, objects, limits and error messages, kept as files under one folder per bucket.

A call's arguments are checked in `r2_options.py`, bodies stream in and out through `r2_objects.py`
(neither side holds a body in memory), and objects live in the bucket's blob files and SQLite index
(`r2_store.py`). Every PoP shares one `R2Bucket`; its SQLite and file work runs on worker threads,
never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from asyncio import to_thread
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgewise_sdk.workers import JsDict

from ..config_error import ConfigError
from .r2_objects import BlobChunks, R2Object, R2ObjectBody, r2_object, received
from .r2_options import (
    GET_OPTIONS,
    LIST_OPTIONS,
    MAX_DELETE_KEYS,
    MAX_LIST_LIMIT,
    MAX_PART_NUMBER,
    MIN_PART_BYTES,
    PUT_OPTIONS,
    UPLOAD_OPTIONS,
    R2Error,
    always,
    check_key,
    cursor_for,
    cursor_position,
    custom_metadata_in,
    describe,
    expected_hash,
    http_metadata_in,
    includes,
    list_limit,
    list_text,
    merged_options,
    now_ms,
    parse_condition,
    parse_range,
    parse_storage_class,
)
from .r2_store import BlobStore, ObjectRow, PartRow, UploadRow, unlink_files

if TYPE_CHECKING:
    from ..config import BindingSpec
    from . import StateDir


BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
JURISDICTIONS = ("eu", "fedramp")


def open_binding(spec: BindingSpec, state: StateDir) -> R2Bucket:
    """The bucket `bucket_name` names (with its `jurisdiction`, if any), as `wrangler dev` keeps it locally."""
    bucket_name = spec.settings.get("bucket_name")
    jurisdiction = spec.settings.get("jurisdiction")
    if not isinstance(bucket_name, str) or not BUCKET_NAME.fullmatch(bucket_name):
        raise ConfigError(None, "r2_buckets", f"binding {spec.name!r}: bucket_name must be 3 to 63 lower-case "
                                              f"letters, digits and hyphens, starting and ending with a letter "
                                              f"or digit, as R2 names buckets; got {bucket_name!r}")
    if jurisdiction is not None and jurisdiction not in JURISDICTIONS:
        raise ConfigError(None, "r2_buckets", f"binding {spec.name!r}: jurisdiction must be one of "
                                              f"{', '.join(JURISDICTIONS)}; got {jurisdiction!r}")
    return R2Bucket(str(spec.name), BlobStore(bucket_folder(state, bucket_name, jurisdiction)))


def bucket_folder(state: StateDir, bucket_name: str, jurisdiction: str | None = None) -> Path:
    """`<state>/r2/<bucket>`; a jurisdiction's bucket is another bucket (`files.eu`; R2 names have no dots)."""
    return state.folder("r2", bucket_name if jurisdiction is None else f"{bucket_name}.{jurisdiction}")


class R2Bucket:
    """`env.<BINDING>` of an `[[r2_buckets]]` declaration."""

    def __init__(self, name: str, store: BlobStore) -> None:
        self.name = name
        self._store = store

    def __repr__(self) -> str:
        return f"<R2Bucket {self.name} at {self._store.folder}>"

    async def head(self, key: str) -> R2Object | None:
        check_key("head", key)
        row = await to_thread(self._store.lookup, key)
        return None if row is None else r2_object(row)

    async def get(self, key: str, options: Mapping[str, Any] | None = None, *, range: Any = None,
                  onlyIf: Any = None) -> R2ObjectBody | R2Object | None:
        """The object with its body, None if there is none, or the object without a body if `onlyIf` fails."""
        given = merged_options("get", options, {"range": range, "onlyIf": onlyIf}, GET_OPTIONS)
        check_key("get", key)
        condition = parse_condition("get", given.get("onlyIf"))
        wanted = parse_range("get", given.get("range"))
        opened = await to_thread(self._store.open_object, key)
        if opened is None:
            return None
        row, file = opened
        try:
            if condition is not None and not condition.admits(row):
                file.close()
                return r2_object(row)
            offset, length = wanted.resolve(row.size) if wanted is not None else (0, row.size)
        except BaseException:
            file.close()
            raise
        return r2_object(row, R2ObjectBody, range=JsDict(offset=offset, length=length),
                       _chunks=BlobChunks(file, offset, length))

    async def put(self, key: str, value: Any, options: Mapping[str, Any] | None = None, *, onlyIf: Any = None,
                  httpMetadata: Any = None, customMetadata: Any = None, storageClass: str | None = None,
                  md5: Any = None, sha1: Any = None, sha256: Any = None, sha384: Any = None,
                  sha512: Any = None) -> R2Object | None:
        """Store `value` (str, bytes, None, a Blob or a stream of bytes); None if `onlyIf` fails."""
        given = merged_options("put", options, {"onlyIf": onlyIf, "httpMetadata": httpMetadata,
                                          "customMetadata": customMetadata, "storageClass": storageClass,
                                          "md5": md5, "sha1": sha1, "sha256": sha256, "sha384": sha384,
                                          "sha512": sha512}, PUT_OPTIONS)
        check_key("put", key)
        condition = parse_condition("put", given.get("onlyIf"))
        http, custom = http_metadata_in("put", given.get("httpMetadata")), custom_metadata_in("put", given)
        storage_class = parse_storage_class("put", given.get("storageClass"))
        expected = expected_hash(given)
        incoming = await received("put", value, self._store.new_incoming(), expected)
        hex_digests = {name: digest.hexdigest() for name, digest in incoming.hashes.items()}
        checksums = {name: hex_digests[name] for name in ("md5", *(expected[:1] if expected else ()))}
        row = ObjectRow(key, uuid.uuid4().hex, uuid.uuid4().hex, incoming.size, hex_digests["md5"], now_ms(), http,
                   custom, json.dumps(checksums), storage_class)
        admits = condition.admits if condition is not None else always
        stored = await to_thread(self._store.commit_object, row, incoming.path, admits)
        return r2_object(row) if stored else None

    async def delete(self, keys: str | list[str]) -> None:
        """Delete one key or a list of up to 1000; keys that hold nothing are fine."""
        if isinstance(keys, str):
            keys = [keys]
        elif not isinstance(keys, list):
            raise TypeError(f"R2 delete() takes a key or a list of keys, got {describe(keys)}")
        if len(keys) > MAX_DELETE_KEYS:
            raise R2Error("delete", f"A delete takes at most {MAX_DELETE_KEYS} keys, got {len(keys)}; delete them "
                                    f"in batches.")
        for key in keys:
            check_key("delete", key)
        if keys:
            await to_thread(self._store.delete, keys)

    async def list(self, options: Mapping[str, Any] | None = None, *, prefix: str | None = None,
                   cursor: str | None = None, delimiter: str | None = None, startAfter: str | None = None,
                   limit: int | None = None, include: list[str] | None = None) -> JsDict:
        """`{objects, truncated, cursor?, delimitedPrefixes}`, by key (UTF-8 byte order)."""
        given = merged_options("list", options, {"prefix": prefix, "cursor": cursor, "delimiter": delimiter,
                                           "startAfter": startAfter, "limit": limit, "include": include},
                         LIST_OPTIONS)
        prefix_ = list_text("prefix", given.get("prefix", ""))
        delimiter_ = list_text("delimiter", given.get("delimiter", "")) or None
        count = list_limit(given.get("limit", MAX_LIST_LIMIT))
        included = includes(given.get("include", []))
        if "cursor" in given:
            after, inclusive = cursor_position(given["cursor"])
        else:
            after, inclusive = list_text("startAfter", given.get("startAfter", "")) or None, False
        entries = await to_thread(self._store.list_entries, prefix_, after, inclusive, delimiter_, count + 1)
        page = entries[:count]
        result = JsDict(objects=[r2_object(entry, include=included) for entry in page if isinstance(entry, ObjectRow)],
                        truncated=len(entries) > count,
                        delimitedPrefixes=[entry for entry in page if isinstance(entry, str)])
        if result.truncated:
            result.cursor = cursor_for(page[-1])
        return result

    async def createMultipartUpload(self, key: str, options: Mapping[str, Any] | None = None, *,
                                    httpMetadata: Any = None, customMetadata: Any = None,
                                    storageClass: str | None = None) -> R2MultipartUpload:
        given = merged_options("createMultipartUpload", options, {"httpMetadata": httpMetadata,
                         "customMetadata": customMetadata, "storageClass": storageClass}, UPLOAD_OPTIONS)
        check_key("createMultipartUpload", key)
        upload = UploadRow(key, http_metadata_in("createMultipartUpload", given.get("httpMetadata")),
                         custom_metadata_in("createMultipartUpload", given),
                         parse_storage_class("createMultipartUpload", given.get("storageClass")))
        upload_id = base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode().rstrip("=")
        await to_thread(self._store.create_upload, upload_id, upload)
        return R2MultipartUpload(self._store, key, upload_id)

    def resumeMultipartUpload(self, key: str, uploadId: str) -> R2MultipartUpload:
        """Synchronous, as in workerd: an unknown upload id is found out by the first call on it."""
        check_key("resumeMultipartUpload", key)
        if not isinstance(uploadId, str) or not uploadId:
            raise TypeError(f"R2 resumeMultipartUpload() uploadId must be the string createMultipartUpload gave, "
                            f"got {describe(uploadId)}")
        return R2MultipartUpload(self._store, key, uploadId)

    def close(self) -> None:
        self._store.close()


class R2MultipartUpload:
    """An upload begun by `createMultipartUpload`: parts are kept as blobs until `complete` joins them."""

    def __init__(self, store: BlobStore, key: str, upload_id: str) -> None:
        self._store = store
        self.key, self.uploadId = key, upload_id

    def __repr__(self) -> str:
        return f"<R2MultipartUpload {self.key!r} {self.uploadId}>"

    async def uploadPart(self, partNumber: int, value: Any, options: Mapping[str, Any] | None = None) -> JsDict:
        """`{partNumber, etag}` for the part stored (a part sent again under its number replaces it)."""
        merged_options("uploadPart", options, {}, ())
        if not isinstance(partNumber, int) or isinstance(partNumber, bool) or not 1 <= partNumber <= MAX_PART_NUMBER:
            raise R2Error("uploadPart", f"Part number must be between 1 and {MAX_PART_NUMBER} (inclusive), got "
                                        f"{partNumber!r}.", 10029)
        await self._found("uploadPart")
        incoming = await received("uploadPart", value, self._store.new_incoming(), None)
        part = PartRow(partNumber, uuid.uuid4().hex, incoming.size, incoming.hashes["md5"].hexdigest())
        if not await to_thread(self._store.commit_part, self.uploadId, self.key, part, incoming.path):
            raise _no_such_upload("uploadPart")
        return JsDict(partNumber=partNumber, etag=part.etag)

    async def complete(self, uploadedParts: list[Any]) -> R2Object:
        """Join the listed parts (by partNumber) into the object, S3's etag `<md5 of part md5s>-<parts>`."""
        operation = "completeMultipartUpload"
        listed = _listed_parts(uploadedParts)
        upload = await self._found(operation)
        stored = await to_thread(self._store.parts, self.uploadId)
        parts = [_chosen_part(stored, number, etag) for number, etag in listed]
        _check_part_sizes(parts)
        part_md5s = b"".join(bytes.fromhex(part.etag) for part in parts)
        row = ObjectRow(self.key, uuid.uuid4().hex, uuid.uuid4().hex, sum(part.size for part in parts),
                   f"{hashlib.md5(part_md5s).hexdigest()}-{len(parts)}", now_ms(), upload.http_metadata,
                   upload.custom_metadata, "{}", upload.storage_class)
        incoming = self._store.new_incoming()
        try:
            await to_thread(self._store.join_parts, parts, incoming)
        except BaseException:
            unlink_files(incoming)
            raise
        if not await to_thread(self._store.finish_upload, self.uploadId, self.key, row, incoming):
            raise _no_such_upload(operation)
        return r2_object(row)

    async def abort(self) -> None:
        if not await to_thread(self._store.finish_upload, self.uploadId, self.key):
            raise _no_such_upload("abortMultipartUpload")

    async def _found(self, operation: str) -> UploadRow:
        upload = await to_thread(self._store.find_upload, self.uploadId, self.key)
        if upload is None:
            raise _no_such_upload(operation)
        return upload


def _no_such_upload(operation: str) -> R2Error:
    return R2Error(operation, "The specified multipart upload does not exist.", 10024)


def _listed_parts(parts: Any) -> list[tuple[int, str]]:
    if not isinstance(parts, list) or not parts:
        raise TypeError(f"R2 complete() takes the list of parts uploadPart returned ({{partNumber, etag}} each), "
                        f"got {describe(parts)}")
    listed = []
    for part in parts:
        if not isinstance(part, Mapping) or not isinstance(part.get("partNumber"), int) \
                or not isinstance(part.get("etag"), str):
            raise TypeError(f"R2 complete(): each part is a {{partNumber, etag}} dict as uploadPart returned it, "
                            f"got {describe(part)}")
        listed.append((part["partNumber"], part["etag"]))
    numbers = [number for number, _ in listed]
    if len(set(numbers)) != len(numbers):
        raise R2Error("completeMultipartUpload", "There was a problem with the multipart upload: a part number is "
                                                 "listed twice.", 10025)
    return sorted(listed)


def _chosen_part(stored: dict[int, PartRow], number: int, etag: str) -> PartRow:
    part = stored.get(number)
    if part is None or part.etag != etag.strip('"'):
        raise R2Error("completeMultipartUpload", f"One or more of the specified parts could not be found (part "
                                                 f"{number} with etag {etag!r}).", 10025)
    return part


def _check_part_sizes(parts: list[PartRow]) -> None:
    leading = parts[:-1]
    for part in leading:
        if part.size < MIN_PART_BYTES:
            raise R2Error("completeMultipartUpload", f"Your proposed upload is smaller than the minimum allowed "
                                                     f"object size: part {part.part_number} is {part.size} bytes; "
                                                     f"every part but the last needs {MIN_PART_BYTES}.", 10011)
    if len({part.size for part in leading}) > 1:
        raise R2Error("completeMultipartUpload", "There was a problem with the multipart upload: all non-trailing "
                                                 "parts must have the same length.", 10048)

"""What the Worker passes to an R2 call, checked as Cloudflare checks it: R2's limits and errors,
options, keys, metadata, checksums, `onlyIf` conditions, ranges and list cursors.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from edgewise_sdk.workers import Headers

from .r2_store import ObjectRow
from .sqlite_pool import prefix_end

# Cloudflare's limits (developers.cloudflare.com/r2/platform/limits)
MAX_KEY_BYTES = 1024
MAX_PUT_BYTES = 5 * 1024**3 - 5 * 1024**2  # 4.995 GiB in one put or one part
MAX_CUSTOM_METADATA_BYTES = 8192
MAX_LIST_LIMIT = 1000
MAX_DELETE_KEYS = 1000
MIN_PART_BYTES = 5 * 1024 * 1024  # every part but the last
MAX_PART_NUMBER = 10000
STORAGE_CLASSES = ("Standard", "InfrequentAccess")
HASHES = {"md5": 16, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}  # name -> digest bytes
HTTP_FIELDS = {  # httpMetadata name -> header
    "contentType": "content-type", "contentLanguage": "content-language",
    "contentDisposition": "content-disposition", "contentEncoding": "content-encoding",
    "cacheControl": "cache-control", "cacheExpiry": "expires",
}
CONDITIONS = ("etagMatches", "etagDoesNotMatch", "uploadedBefore", "uploadedAfter", "secondsGranularity")
GET_OPTIONS = ("range", "onlyIf")
PUT_OPTIONS = ("onlyIf", "httpMetadata", "customMetadata", "storageClass", *HASHES)
LIST_OPTIONS = ("prefix", "cursor", "delimiter", "startAfter", "limit", "include")
UPLOAD_OPTIONS = ("httpMetadata", "customMetadata", "storageClass")
INCLUDES = ("httpMetadata", "customMetadata")


class R2Error(Exception):
    """An R2 call Cloudflare would refuse; the message reads like workerd's,
    "put: The Content-MD5 you specified did not match what we received. (10037)"."""

    def __init__(self, operation: str, message: str, code: int | None = None) -> None:
        super().__init__(f"{operation}: {message}" + (f" ({code})" if code is not None else ""))
        self.code = code


class R2RangeError(R2Error, ValueError):
    """A `range` R2 cannot serve (workerd raises a RangeError or InvalidRange, 10039)."""


def merged_options(call: str, options: Any, keywords: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JS options object: a dict in the options position, then keyword arguments; None means unset."""
    if options is not None and (not isinstance(options, Mapping) or isinstance(options, Headers)):
        raise TypeError(f"R2 {call}() options must be a dict or None, got {describe(options)}")
    merged = {**(options or {}), **{name: value for name, value in keywords.items() if value is not None}}
    unknown = [name for name in merged if name not in allowed]
    if unknown:
        raise TypeError(f"R2 {call}() has no option {unknown[0]!r}; its options are {', '.join(allowed) or 'none'}")
    return {name: value for name, value in merged.items() if value is not None}


def check_key(operation: str, key: Any) -> None:
    if not isinstance(key, str):
        raise TypeError(f"R2 {operation}() key must be a string, got {describe(key)}")
    try:
        length = len(key.encode())
    except UnicodeEncodeError:
        raise TypeError(f"R2 {operation}() key {key!r} is not valid Unicode (it holds a lone surrogate)") from None
    if length > MAX_KEY_BYTES:
        raise R2Error(operation, f"The specified object name is not valid: its UTF-8 form is {length} bytes, "
                                 f"over R2's {MAX_KEY_BYTES}.", 10020)


def http_metadata_in(operation: str, given: Any) -> str:
    """httpMetadata as stored: JSON with cacheExpiry in epoch milliseconds."""
    if given is None:
        return "{}"
    if isinstance(given, Headers):
        by_header = {header: name for name, header in HTTP_FIELDS.items()}
        given = {by_header[header]: value for header, value in given.items() if header in by_header}
        if "cacheExpiry" in given:
            given["cacheExpiry"] = _http_date(given["cacheExpiry"])
    if not isinstance(given, Mapping):
        raise TypeError(f"R2 {operation}() httpMetadata must be a dict or a Headers, got {describe(given)}")
    stored: dict[str, Any] = {}
    for name, value in given.items():
        if name not in HTTP_FIELDS:
            raise TypeError(f"R2 {operation}() httpMetadata has no field {name!r}; its fields are "
                            f"{', '.join(HTTP_FIELDS)}")
        if name == "cacheExpiry":
            stored[name] = _epoch_ms(operation, "httpMetadata.cacheExpiry", value)
        elif not isinstance(value, str):
            raise TypeError(f"R2 {operation}() httpMetadata.{name} must be a string, got {describe(value)}")
        else:
            stored[name] = value
    return json.dumps(stored)


def custom_metadata_in(operation: str, given: dict[str, Any]) -> str:
    custom = given.get("customMetadata", {})
    if not isinstance(custom, Mapping) or not all(isinstance(item, str) for pair in custom.items() for item in pair):
        raise TypeError(f"R2 {operation}() customMetadata must be a dict of strings to strings, got "
                        f"{describe(custom)}")
    size = sum(len(name.encode()) + len(value.encode()) for name, value in custom.items())
    if size > MAX_CUSTOM_METADATA_BYTES:
        raise R2Error(operation, f"Your metadata headers exceed the maximum allowed metadata size: {size} bytes, "
                                 f"over {MAX_CUSTOM_METADATA_BYTES}.", 10012)
    return json.dumps(dict(custom))


def parse_storage_class(operation: str, given: Any) -> str:
    if given is None:
        return "Standard"
    if given not in STORAGE_CLASSES:
        raise TypeError(f"R2 {operation}() storageClass must be one of {', '.join(STORAGE_CLASSES)}, got "
                        f"{describe(given)}")
    return given


def expected_hash(given: dict[str, Any]) -> tuple[str, bytes] | None:
    named = [name for name in HASHES if name in given]
    if len(named) > 1:
        raise TypeError(f"R2 put(): You cannot specify multiple hashing algorithms (got {', '.join(named)}).")
    if not named:
        return None
    name, value = named[0], given[named[0]]
    try:
        digest = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    except (TypeError, ValueError):
        digest = b""
    if len(digest) != HASHES[name] or isinstance(value, (int, list)):
        raise TypeError(f"R2 put() {name} must be {HASHES[name]} bytes or {2 * HASHES[name]} hex digits, got "
                        f"{describe(value)}")
    return name, digest


def _epoch_ms(operation: str, option: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            pass
    if not isinstance(value, datetime):
        raise TypeError(f"R2 {operation}() {option} must be a datetime (or an ISO 8601 string), got "
                        f"{describe(value)}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _http_date(text: str) -> datetime:
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise TypeError(f"R2: {text!r} is not an HTTP date (such as 'Wed, 21 Oct 2015 07:28:00 GMT')") from None


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def always(_: ObjectRow | None) -> bool:
    return True


@dataclass(frozen=True)
class _Condition:
    """`onlyIf`, as R2 tests it (miniflare's `_testR2Conditional`): etags, then upload times."""

    etag_matches: tuple[str, ...] | None = None
    etag_does_not_match: tuple[str, ...] | None = None
    uploaded_before_ms: int | None = None
    uploaded_after_ms: int | None = None
    seconds_granularity: bool = False

    def admits(self, row: ObjectRow | None) -> bool:
        if row is None:
            return self.etag_matches is None and self.uploaded_after_ms is None
        if_match = self.etag_matches is None or _matches(row.etag, self.etag_matches)
        if_none_match = self.etag_does_not_match is None or not _matches(row.etag, self.etag_does_not_match)
        uploaded = self._truncated(row.uploaded_ms)
        modified_since = self.uploaded_after_ms is None or self._truncated(self.uploaded_after_ms) < uploaded \
            or (self.etag_does_not_match is not None and if_none_match)
        unmodified_since = self.uploaded_before_ms is None or uploaded < self._truncated(self.uploaded_before_ms) \
            or (self.etag_matches is not None and if_match)
        return if_match and if_none_match and modified_since and unmodified_since

    def _truncated(self, ms: int) -> int:
        return ms - ms % 1000 if self.seconds_granularity else ms


def _matches(etag: str, etags: tuple[str, ...]) -> bool:
    return any(candidate in ("*", etag) for candidate in etags)


def parse_condition(operation: str, given: Any) -> _Condition | None:
    if given is None:
        return None
    if isinstance(given, Headers):
        return _header_condition(operation, given)
    if not isinstance(given, Mapping):
        raise TypeError(f"R2 {operation}() onlyIf must be a dict ({', '.join(CONDITIONS)}) or a Headers, got "
                        f"{describe(given)}")
    unknown = [name for name in given if name not in CONDITIONS]
    if unknown:
        raise TypeError(f"R2 {operation}() onlyIf has no field {unknown[0]!r}; its fields are {', '.join(CONDITIONS)}")
    return _Condition(
        etag_matches=_etags(operation, given.get("etagMatches")),
        etag_does_not_match=_etags(operation, given.get("etagDoesNotMatch")),
        uploaded_before_ms=_optional_ms(operation, "onlyIf.uploadedBefore", given.get("uploadedBefore")),
        uploaded_after_ms=_optional_ms(operation, "onlyIf.uploadedAfter", given.get("uploadedAfter")),
        seconds_granularity=bool(given.get("secondsGranularity", False)))


def _header_condition(operation: str, headers: Headers) -> _Condition | None:
    """If-Match, If-None-Match, If-Modified-Since and If-Unmodified-Since, at HTTP's one-second granularity."""
    def etags(name: str) -> tuple[str, ...] | None:
        value = headers.get(name)
        return None if value is None else _etags(operation, value.split(","))

    def date_ms(name: str) -> int | None:
        value = headers.get(name)
        return None if value is None else _epoch_ms(operation, name, _http_date(value))

    return _Condition(etags("if-match"), etags("if-none-match"), date_ms("if-unmodified-since"),
                      date_ms("if-modified-since"), seconds_granularity=True)


def _etags(operation: str, given: Any) -> tuple[str, ...] | None:
    if given is None:
        return None
    values = [given] if isinstance(given, str) else given
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise TypeError(f"R2 {operation}() onlyIf etags must be a string or a list of strings, got {describe(given)}")
    return tuple(value.strip().removeprefix("W/").strip('"') for value in values)


def _optional_ms(operation: str, option: str, value: Any) -> int | None:
    return None if value is None else _epoch_ms(operation, option, value)


@dataclass(frozen=True)
class _Range:
    offset: int | None = None
    length: int | None = None
    suffix: int | None = None

    def resolve(self, size: int) -> tuple[int, int]:
        """(offset, length) within an object of `size` bytes; R2 refuses a start past the end."""
        if self.suffix is not None:
            length = min(self.suffix, size)
            return size - length, length
        offset = self.offset or 0
        if offset >= size and (offset > 0 or size > 0):
            raise R2RangeError("get", f"The requested range is not satisfiable: offset {offset} is at or past the "
                                      f"end of the {size}-byte object.", 10039)
        available = size - offset
        return offset, available if self.length is None else min(self.length, available)


def parse_range(operation: str, given: Any) -> _Range | None:
    if given is None:
        return None
    if isinstance(given, Headers):
        return _header_range(operation, given.get("range"))
    if not isinstance(given, Mapping):
        raise TypeError(f"R2 {operation}() range must be a dict ({{offset, length}} or {{suffix}}) or a Headers, "
                        f"got {describe(given)}")
    unknown = [name for name in given if name not in ("offset", "length", "suffix")]
    if unknown:
        raise TypeError(f"R2 {operation}() range has no field {unknown[0]!r}; its fields are offset, length, suffix")
    numbers = {name: _range_number(operation, name, value) for name, value in given.items() if value is not None}
    if not numbers:
        raise R2RangeError(operation, "Invalid range: give offset, length, or suffix.")
    if "suffix" in numbers and len(numbers) > 1:
        raise R2RangeError(operation, "Invalid range: suffix is incompatible with offset and length.")
    return _Range(**numbers)


def _range_number(operation: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise R2RangeError(operation, f"Invalid range: {name} must be a whole number, got {value!r}.")
    if value < 0:
        raise R2RangeError(operation, f"Invalid range: {name} ({value}) must be greater than or equal to 0.")
    return int(value)


def _header_range(operation: str, value: str | None) -> _Range | None:
    if value is None:
        return None
    matched = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if matched is None or matched.group(1) == matched.group(2) == "":
        raise R2RangeError(operation, f"Invalid range: R2 serves one range such as 'bytes=0-99', got {value!r}.")
    first, last = matched.groups()
    if first == "":
        return _Range(suffix=int(last))
    if last != "" and int(last) < int(first):
        raise R2RangeError(operation, f"Invalid range: {value!r} ends before it starts.")
    return _Range(offset=int(first), length=None if last == "" else int(last) - int(first) + 1)


def list_text(option: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"R2 list() {option} must be a string, got {describe(value)}")
    return value


def list_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit):
        raise TypeError(f"R2 list() limit must be a number, got {describe(limit)}")
    if limit < 1:
        raise R2Error("list", f"MaxKeys params must be positive: limit is {limit}.", 10022)
    if limit > MAX_LIST_LIMIT:
        raise R2Error("list", f"MaxKeys params must be less than or equal to {MAX_LIST_LIMIT}: limit is {limit}.",
                      10022)
    return int(limit)


def includes(given: Any) -> tuple[str, ...]:
    if not isinstance(given, list) or any(name not in INCLUDES for name in given):
        raise TypeError(f"R2 list() include must be a list of {' and '.join(INCLUDES)}, got {describe(given)}")
    return tuple(given)


def cursor_for(entry: ObjectRow | str) -> str:
    """Where the next page starts: after the last object, or past every key under the last delimited prefix."""
    position = [entry.key, False] if isinstance(entry, ObjectRow) else [prefix_end(entry) or "", True]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def cursor_position(cursor: Any) -> tuple[str, bool]:
    position = _decoded_cursor(cursor) if isinstance(cursor, str) else None
    if position is None:
        raise R2Error("list", f"Invalid cursor {cursor!r}: pass the cursor of the previous list() result unchanged.")
    return position


def _decoded_cursor(cursor: str) -> tuple[str, bool] | None:
    try:
        key, inclusive = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        return None
    return (key, inclusive) if isinstance(key, str) and isinstance(inclusive, bool) else None


def describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]

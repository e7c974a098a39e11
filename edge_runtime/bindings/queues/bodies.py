"""Queue message bodies: the four content types turned into bytes for the store and back, and the
limits Cloudflare puts on what a producer sends (developers.cloudflare.com/queues/platform/limits).

A consumer gets back the Python value the producer sent: `json` and `v8` values as JSON-like data
(dicts as JsDicts), `text` as `str`, `bytes` as `bytes`. `v8` stands for the structured clone
Cloudflare applies by default; for Python values it is JSON that also carries `bytes` and `datetime`.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from edgewise_sdk.workers import to_jsdict

CONTENT_TYPES = ("json", "text", "bytes", "v8")
DEFAULT_CONTENT_TYPE = "v8"  # Cloudflare's default: any structured-clonable value
MAX_MESSAGE_BYTES = 128 * 1000
MAX_BATCH_MESSAGES = 100
MAX_BATCH_BYTES = 256 * 1000
MAX_DELAY_S = 43200  # 12 hours: delaySeconds, delivery_delay and retry delays
# v8 bodies: a dict with this one key stands for a value JSON has no form for
_TAG = "\u0000edgewise"


class QueueError(Exception):
    """A producer or consumer call Cloudflare would refuse; nothing was sent or changed."""


class QueueTypeError(QueueError, TypeError):
    """A body, content type or option of the wrong type (workerd raises a TypeError for these)."""


def encode_body(body: Any, content_type: str, operation: str) -> bytes:
    """The stored bytes of `body` sent as `content_type`; a body over 128 KB is refused."""
    if content_type not in CONTENT_TYPES:
        raise QueueTypeError(f"Queue {operation} failed: contentType {content_type!r} is not one of "
                             f"{', '.join(repr(c) for c in CONTENT_TYPES)}")
    if content_type == "text":
        if not isinstance(body, str):
            raise QueueTypeError(f"Queue {operation} failed: contentType 'text' needs a str body, "
                                 f"got {type(body).__name__}")
        data = body.encode()
    elif content_type == "bytes":
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise QueueTypeError(f"Queue {operation} failed: contentType 'bytes' needs a bytes body, "
                                 f"got {type(body).__name__}")
        data = bytes(body)
    else:
        data = _dump(body if content_type == "json" else _tagged(body, operation), content_type, operation)
    if len(data) > MAX_MESSAGE_BYTES:
        raise QueueError(f"Queue {operation} failed: message length of {len(data)} bytes exceeds limit of "
                         f"{MAX_MESSAGE_BYTES}")
    return data


def decode_body(data: bytes, content_type: str) -> Any:
    """The value a consumer sees for a stored body."""
    if content_type == "text":
        return data.decode()
    if content_type == "bytes":
        return bytes(data)
    value = json.loads(data)
    return to_jsdict(_untagged(value) if content_type == "v8" else value)


def check_delay(value: Any, what: str, operation: str) -> int | float:
    """A delay in seconds, 0 to 12 hours."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise QueueTypeError(f"Queue {operation} failed: {what} must be a number of seconds, "
                             f"got {type(value).__name__}")
    if not 0 <= value <= MAX_DELAY_S:
        raise QueueError(f"Queue {operation} failed: {what} must be between 0 and {MAX_DELAY_S} seconds "
                         f"(12 hours), got {value}")
    return value


def read_options(options: Any, keywords: Mapping[str, Any], allowed: tuple[str, ...], operation: str
                 ) -> dict[str, Any]:
    """Options given as a dict (`send(body, {"delaySeconds": 5})`) and/or as keywords, checked by name."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise QueueTypeError(f"Queue {operation} failed: options must be a dict, got {type(options).__name__}")
    merged = {**options, **keywords}
    unknown = sorted(set(merged) - set(allowed))
    if unknown:
        raise QueueTypeError(f"Queue {operation} failed: unknown option {unknown[0]!r} (options: "
                             f"{', '.join(allowed)})")
    return {key: value for key, value in merged.items() if value is not None}


def _dump(value: Any, content_type: str, operation: str) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise QueueTypeError(f"Queue {operation} failed: the body cannot be sent as contentType "
                             f"{content_type!r}: {error}") from None


def _tagged(value: Any, operation: str) -> Any:
    """A v8 body as JSON data: bytes and datetimes become tagged dicts; tuples and sets are refused, as
    Cloudflare's Python SDK refuses to send them."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_TAG: ["bytes", base64.b64encode(bytes(value)).decode()]}
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return {_TAG: ["date", round(moment.timestamp() * 1000)]}
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise QueueTypeError(f"Queue {operation} failed: dict keys must be str, got {type(key).__name__}")
        return {key: _tagged(item, operation) for key, item in value.items()}
    if isinstance(value, list):
        return [_tagged(item, operation) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise QueueTypeError(f"Queue {operation} failed: {type(value).__name__} cannot be sent over RPC "
                         "(send lists, dicts, str, numbers, bools, None, bytes or datetimes)")


def _untagged(value: Any) -> Any:
    if isinstance(value, dict):
        tagged = value.get(_TAG) if len(value) == 1 else None
        if tagged is not None:
            kind, payload = tagged
            if kind == "bytes":
                return base64.b64decode(payload)
            return datetime.fromtimestamp(payload / 1000, UTC)
        return {key: _untagged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_untagged(item) for item in value]
    return value

"""Request bodies: JSON whatever the Content-Type says (Cloudflare's curl examples send none), size-capped."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from .errors import BadInputError, RequestTooLargeError

MAX_BODY_BYTES = 10 * 1024 * 1024


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadInputError("the request body is empty: send the inputs as a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInputError(f"the request body is not valid JSON ({error})") from None


def _too_large(size: int, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"Request is too large: {size} bytes; at most {limit}")

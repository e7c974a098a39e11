"""Server-sent events as Workers AI and OpenAI frame them; the WebSocket protocol reuses the same payloads.

Workers AI: ``data: {"response": "..."}`` per piece of text, a last ``data: {"response": "",
"usage": {...}}``, then ``data: [DONE]``. An error after the stream began (the engine failed,
the service shut down) is one ``data: {"error": {"code", "message"}}`` event and no ``[DONE]``,
so a client can tell a cut-off answer from a finished one.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from .errors import EngineFailedError, ServiceError
from .generation import Generation

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Asks for "emitted_ns" in each event (when the service sent it) and "received_ns" in the first
# (when the service had the request), both wall-clock nanoseconds.
TRACE_HEADER = "x-edgewise-trace"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_payload(error: BaseException) -> dict[str, Any]:
    service_error = error if isinstance(error, ServiceError) else EngineFailedError(f"AiError: {error}")
    return {"error": {"code": service_error.code, "message": service_error.message}}


async def workers_ai_payloads(generation: Generation, trace: bool = False) -> AsyncIterator[dict[str, Any]]:
    """The events of a Workers AI stream as dicts: text pieces, then the usage event (no [DONE])."""
    first = trace
    async for delta in generation.deltas():
        if delta.text:
            payload = _stamped({"response": delta.text}, trace)
            if first:
                payload["received_ns"], first = generation.received_ns, False
            yield payload
    yield _stamped({"response": "", "usage": generation.usage.as_dict()}, trace)


async def workers_ai_events(generation: Generation, trace: bool = False) -> AsyncIterator[bytes]:
    try:
        async for payload in workers_ai_payloads(generation, trace):
            yield sse(payload)
    except Exception as error:  # the stream has begun: the error can only travel as an event
        yield sse(error_payload(error))
        return
    yield DONE


def _stamped(payload: dict[str, Any], trace: bool) -> dict[str, Any]:
    if trace:
        payload["emitted_ns"] = time.time_ns()
    return payload

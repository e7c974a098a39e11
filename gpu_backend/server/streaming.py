"""Server-sent events as Workers AI and OpenAI frame them; the WebSocket protocol reuses the same payloads.

Workers AI: ``data: {"response": "..."}`` per piece of text, a last ``data: {"response": "",
"usage": {...}}``, then ``data: [DONE]``. An error after the stream began (the engine failed,
the service shut down) is one ``data: {"error": {"code", "message"}}`` event and no ``[DONE]``,
so a client can tell a cut-off answer from a finished one. With ``tools``, text that may begin a
call is held back, and the calls come in one ``{"response": "", "tool_calls": [...]}`` event
before the usage event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

from .errors import EngineFailedError, ServiceError
from .generation import Generation, disconnected
from .text import TokenLogprob
from .tool_parsers import ToolCallStream, finds_calls

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class EventStream:
    """An SSE response whose headers and first event leave in one go, then each event as it comes.

    Lighter than a general streaming response on the path every first token takes; a client
    that disconnects cancels the events' iterator, which aborts the generation behind it.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self._stream(send))
        watching = asyncio.ensure_future(disconnected(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, watching):
                task.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)

    async def _stream(self, send: Send) -> None:
        first = await anext(self.events, b"")  # ready at once: the route awaited the first delta
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
# Asks for "emitted_ns" in each event (when the service sent it) and "received_ns" in the first
# (when the service had the request), both wall-clock nanoseconds.
TRACE_HEADER = "x-edgewise-trace"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def error_payload(error: BaseException) -> dict[str, Any]:
    service_error = error if isinstance(error, ServiceError) else EngineFailedError(f"AiError: {error}")
    return {"error": {"code": service_error.code, "message": service_error.message}}


async def workers_ai_payloads(generation: Generation, trace: bool = False) -> AsyncIterator[dict[str, Any]]:
    """The events of a Workers AI stream as dicts: text pieces, then the usage event (no [DONE]). Asked
    for, each event carries the logprobs of the tokens since the last one (``{"content": [...]}``)."""
    first, calls, found = trace, tool_call_stream(generation), []
    logprobs: list[TokenLogprob] | None = None if generation.request.sampling.logprobs is None else []
    async for delta in generation.deltas():
        text = delta.text if calls is None else calls.add(delta.text)[0]
        if calls is not None and delta.finish_reason is not None:
            rest, found, _ = calls.finish()
            text += rest
        if logprobs is not None:
            logprobs.extend(delta.logprobs or ())
        if text:
            payload = _stamped({"response": text, **_logprobs(logprobs)}, trace)
            if first:
                payload["received_ns"], first = generation.received_ns, False
            yield payload
    if found:
        yield _stamped({"response": "", "tool_calls": [call.workers_ai() for call in found]}, trace)
    yield _stamped({"response": "", **_logprobs(logprobs), "usage": generation.usage.as_dict()}, trace)


def _logprobs(pending: list[TokenLogprob] | None) -> dict[str, Any]:
    """The ``logprobs`` of an event (none unless asked), taking the pending ones."""
    if pending is None:
        return {}
    content = [item.openai() for item in pending]
    pending.clear()
    return {"logprobs": {"content": content}}


def tool_call_stream(generation: Generation) -> ToolCallStream | None:
    """The splitter of text and calls for a generation whose answer may hold calls."""
    if not finds_calls(generation.request):
        return None
    return ToolCallStream(generation.tool_parser, generation.request.tools)


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

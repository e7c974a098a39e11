"""One generation as the routes see it: admitted, timed for ``/metrics``, and released exactly once.

Entering a ``Generation`` waits for the first delta before any response is sent, so a request the
engine refuses (too long, bad sampling values, queue full) becomes an HTTP error, not a broken
stream; the first token goes out together with the headers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from .text import TextDelta, TokenLogprob
from .schemas import TextGenerationInput
from .tool_parsers import ToolParser, tool_parser, with_tool_constraint

if TYPE_CHECKING:
    from .api import Service

T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens the prefix cache served

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}

    def openai(self) -> dict[str, object]:
        """OpenAI's usage object, with the prompt tokens the prefix cache served (no model here reasons)."""
        return {**self.as_dict(), "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": 0}}


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when the request asked


class ClientGone(Exception):
    """The client disconnected before the answer was ready; its generation was aborted."""


class Generation:
    """``async with Generation(...) as generation``: entering admits the request and waits for its
    first delta (raising the ServiceError that refused it); leaving aborts it if unfinished, frees
    its KV blocks and gives its admission slot back, whatever ended it. HTTP routes enter it on
    the request's stack (``request_scope.resources``), so a stream keeps it until the stream ends."""

    def __init__(self, service: Service, model: str, request: TextGenerationInput, background: bool = False) -> None:
        self.service = service
        self.model = model
        self.background = background  # an async batch item: admitted below interactive requests (admission.py)
        # how the model writes tool calls; a forced call is constrained to that format here, for every route
        self.tool_parser: ToolParser = tool_parser(service.client.model_info(model).tool_format)
        self.request = with_tool_constraint(request, self.tool_parser)
        self.request_id = uuid.uuid4().hex
        self.received_ns = time.time_ns()  # wall clock, for tracing a request's path across processes
        self.usage = Usage(0, 0)
        self.finish_reason: str | None = None
        self._first: TextDelta | None = None
        self._stream: AsyncIterator[TextDelta] | None = None
        self._held = AsyncExitStack()
        self._failed = False  # refused or failed, as opposed to left by its client

    async def __aenter__(self) -> Generation:
        async with AsyncExitStack() as held:
            admission = self.service.admission
            held.enter_context(admission.background_slot(self.model) if self.background else admission.slot(self.model))
            held.push_async_callback(self._close)
            arrival = time.perf_counter()
            self._stream = self.service.client.generate(self.model, self.request, self.request_id)
            self._first = await self._next()
            self.service.metrics.ttft.labels(self.model).observe(time.perf_counter() - arrival)
            self._held = held.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._held.aclose()

    async def deltas(self) -> AsyncIterator[TextDelta]:
        """Every delta, the first one included."""
        assert self._stream is not None and self._first is not None, "enter the generation first"
        itl = self.service.metrics.itl.labels(self.model)
        delta, last = self._first, time.perf_counter()
        while True:
            self._account(delta)
            yield delta
            if delta.finish_reason is not None:
                return
            delta = await self._next()
            now = time.perf_counter()
            for _ in delta.token_ids:
                itl.observe((now - last) / len(delta.token_ids))
            last = now

    async def complete(self) -> Completion:
        deltas = [delta async for delta in self.deltas()]
        logprobs = None
        if self.request.sampling.logprobs is not None:
            logprobs = [item for delta in deltas for item in delta.logprobs or ()]
        return Completion("".join(delta.text for delta in deltas), self.finish_reason or "stop", self.usage, logprobs)

    async def _next(self) -> TextDelta:
        assert self._stream is not None
        try:
            return await anext(self._stream)
        except Exception:
            self._failed = True
            raise

    async def _close(self) -> None:
        """Abort the engine's request unless it finished (freeing its blocks), and count how it ended."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()  # type: ignore[attr-defined]
        if self.finish_reason is None and not self._failed:
            self.service.metrics.aborted.labels(self.model).inc()
        else:
            self.service.metrics.prompt_tokens.labels(self.model).inc(self.usage.prompt_tokens)
            self.service.metrics.generation_tokens.labels(self.model).inc(self.usage.completion_tokens)

    def _account(self, delta: TextDelta) -> None:
        cached = max(self.usage.cached_tokens, delta.num_cached_tokens)
        self.usage = Usage(delta.prompt_tokens, delta.completion_tokens, cached)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` while watching the connection; a client that leaves cancels it (freeing what it held)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its abort has reached the engine
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def disconnected(receive: Receive) -> None:
    """Returns once the HTTP client has gone (the request body must have been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass

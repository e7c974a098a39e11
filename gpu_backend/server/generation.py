"""One generation as the routes see it: admitted, timed for ``/metrics``, and released exactly once.

``Generation.start`` waits for the first delta before any response is sent, so a request the
engine refuses (too long, bad sampling values, queue full) becomes an HTTP error, not a broken
stream; the first token goes out together with the headers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from .client import TextDelta
from .schemas import TextGenerationInput

if TYPE_CHECKING:
    from .api import Service

T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    usage: Usage


class ClientGone(Exception):
    """The client disconnected before the answer was ready; its generation was aborted."""


class Generation:
    def __init__(self, service: Service, model: str, request: TextGenerationInput) -> None:
        self.service = service
        self.model = model
        self.request = request
        self.request_id = uuid.uuid4().hex
        self.received_ns = time.time_ns()  # wall clock, for tracing a request's path across processes
        self.usage = Usage(0, 0)
        self.finish_reason: str | None = None
        self._first: TextDelta | None = None
        self._stream: AsyncIterator[TextDelta] | None = None
        self._admitted = False

    async def start(self) -> None:
        """Admit the request and wait for its first delta; raises the ServiceError that refused it."""
        self.service.admission.acquire(self.model)
        self._admitted = True
        arrival = time.perf_counter()
        self._stream = self.service.client.generate(self.model, self.request, self.request_id)
        try:
            self._first = await anext(self._stream)
        except BaseException:
            await self.close()
            raise
        self.service.metrics.ttft.labels(self.model).observe(time.perf_counter() - arrival)

    async def deltas(self) -> AsyncIterator[TextDelta]:
        """Every delta, the first one included; leaving early aborts the generation and frees its blocks."""
        assert self._stream is not None and self._first is not None, "start() first"
        itl = self.service.metrics.itl.labels(self.model)
        try:
            delta, last = self._first, time.perf_counter()
            while True:
                self._account(delta)
                yield delta
                if delta.finish_reason is not None:
                    return
                delta = await anext(self._stream)
                now = time.perf_counter()
                for _ in delta.token_ids:
                    itl.observe((now - last) / len(delta.token_ids))
                last = now
        finally:
            await self.close()

    async def complete(self) -> Completion:
        texts = [delta.text async for delta in self.deltas()]
        return Completion("".join(texts), self.finish_reason or "stop", self.usage)

    async def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()  # type: ignore[attr-defined]
        if self._admitted:
            self._admitted = False
            self.service.admission.release(self.model)
            if self.finish_reason is None:
                self.service.metrics.aborted.labels(self.model).inc()
            else:
                self.service.metrics.prompt_tokens.labels(self.model).inc(self.usage.prompt_tokens)
                self.service.metrics.generation_tokens.labels(self.model).inc(self.usage.completion_tokens)

    def _account(self, delta: TextDelta) -> None:
        self.usage = Usage(delta.prompt_tokens, delta.completion_tokens)
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

"""The real engines with one kind of request held open on purpose, so a test can fill a model's slots
deterministically (a long generation on CPU ends too soon to rely on): a generation whose ``session``
is ``HOLD`` pauses after its first delta, an embedding whose first text is ``HOLD`` before it runs,
until ``release`` is set (or ``HOLD_LIMIT_S`` passes, so a failed test cannot hang)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from gpu_backend.engine.embedder import EmbeddingResult
from gpu_backend.server.client import LocalEngines, TextDelta
from gpu_backend.server.schemas import EmbeddingsInput, TextGenerationInput

HOLD = "hold"
HOLD_LIMIT_S = 20.0


class HeldEngines:
    """The real engines; a generation of session ``HOLD`` pauses after its first delta until ``release``."""

    def __init__(self, engines: LocalEngines) -> None:
        self.engines = engines
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engines, name)

    async def generate(self, model: str, request: TextGenerationInput, request_id: str) -> AsyncIterator[TextDelta]:
        stream = self.engines.generate(model, request, request_id)
        try:
            first = True
            async for delta in stream:
                yield delta
                if first and request.session == HOLD:
                    await asyncio.to_thread(self.release.wait, HOLD_LIMIT_S)
                first = False
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def embed(self, model: str, request: EmbeddingsInput) -> EmbeddingResult:
        if request.texts[0] == HOLD:
            await asyncio.to_thread(self.release.wait, HOLD_LIMIT_S)
        return await self.engines.embed(model, request)

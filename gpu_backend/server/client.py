"""The one interface between the HTTP layer and the engines that serve its models.

The routes see ``EngineClient`` only: which models exist and what they do, a generation as an
async iterator of ``TextDelta``s, embeddings, and load figures for ``/metrics``.
``LocalEngines`` runs an ``AsyncLLM`` per text-generation checkpoint in this process, or, when
the checkpoints are sharded (tensor and pipeline parallel), a ``ShardedEngine`` whose ranks are
processes of their own; and an ``Embedder`` per embeddings checkpoint (names mapped to the same
folder share one engine).

Prompts are rendered here, as Workers AI does: ``messages`` through the model's chat template
(generation prompt added; a model without one refuses them); a ``prompt`` as one user message
unless ``raw`` is set or the model has no chat template, in which case the text goes to the
model as it is. Rendering and tokenizing run on a few threads of their own, and the engine gets
token ids.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from ..config import EngineConfig, ParallelConfig
from ..engine.async_llm import AsyncLLM
from ..engine.embedder import EmbeddingResult, Embedder, is_embedding_checkpoint
from ..errors import EngineError, InvalidRequestError
from ..cluster.launch import RankProcesses
from ..cluster.sharded_engine import ShardedEngine
from ..disagg.flow import sharded_engine
from .errors import NoSuchModelError, from_engine_error
from .schemas import EmbeddingsInput, TextGenerationInput

Task = Literal["text-generation", "text-embeddings"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: Task
    context_window: int  # tokens: max_model_len, or the encoder's longest input
    max_num_seqs: int  # requests the engine runs at once (1 for an embedder: it takes one batch at a time)


@dataclass(frozen=True)
class TextDelta:
    """What one engine step added to a generation; the last one has ``finish_reason`` set."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # so far
    finish_reason: str | None = None  # "stop", "length" or "abort"


class EngineClient(Protocol):
    def model_names(self) -> list[str]: ...

    def model_info(self, model: str) -> ModelInfo:
        """Raises NoSuchModelError for a name this backend does not serve."""
        ...

    def generate(self, model: str, request: TextGenerationInput, request_id: str) -> AsyncIterator[TextDelta]:
        """Stream one generation; leaving the iterator early aborts it and frees its KV blocks."""
        ...

    async def embed(self, model: str, request: EmbeddingsInput) -> EmbeddingResult: ...

    def stats(self) -> dict[str, dict[str, int]]:
        """Per model: num_running, num_waiting, kv_blocks_used, kv_blocks_free."""
        ...

    def failures(self) -> dict[str, str]:
        """Models whose engine has stopped, with the reason; empty while every engine serves."""
        ...

    def failed_for_good(self) -> list[str]:
        """The models of ``failures`` that no restart will bring back: only restarting the backend does."""
        ...

    def degraded(self) -> dict[str, dict[int, str]]:
        """Models serving with fewer workers than they started with: each lost worker and why."""
        ...

    def events(self) -> dict[str, dict[str, int]]:
        """Per model: how often each failure event happened (a lost worker, a restart, a recomputed request)."""
        ...

    def shutdown(self) -> None: ...


TextEngine = AsyncLLM | ShardedEngine
# Chat templates and tokenizers run on these threads, not on the event loop (a long prompt takes
# tens of ms, megabytes take seconds, and no other request would be served meanwhile) nor on an
# engine's thread (its other requests would wait). A few suffice: admission bounds what queues.
PROMPT_THREADS = 4
_PROMPT_THREADS = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="edgewise-prompt")


class LocalEngines:
    """A text engine per text-generation checkpoint (sharded when ``parallel`` says so) and an
    ``Embedder`` per embeddings one."""

    def __init__(self, models: Mapping[str, str | Path], parallel: ParallelConfig | None = None,
                 max_restarts: int = 3, attached: RankProcesses | None = None, **engine_options: Any) -> None:
        """``attached``: the driver of the one sharded text model, started by torchrun."""
        self._engines: dict[str, TextEngine] = {}
        self._embedders: dict[str, Embedder] = {}
        by_folder: dict[Path, AsyncLLM | Embedder] = {}
        try:
            for name, folder in models.items():
                path = Path(folder).resolve()
                if path not in by_folder:
                    by_folder[path] = _load(path, engine_options, parallel, max_restarts, attached)
                    attached = None if isinstance(by_folder[path], ShardedEngine) else attached
                loaded = by_folder[path]
                (self._embedders if isinstance(loaded, Embedder) else self._engines)[name] = loaded
            self._embedding_turns = {embedder: asyncio.Lock() for embedder in self._embedders.values()}
        except BaseException:
            self.shutdown()
            raise

    def model_names(self) -> list[str]:
        return [*self._engines, *self._embedders]

    def model_info(self, model: str) -> ModelInfo:
        if model in self._embedders:
            return ModelInfo(model, "text-embeddings", self._embedders[model].max_seq_len, 1)
        engine = self.engine(model)
        return ModelInfo(model, "text-generation", engine.max_model_len, engine.max_num_seqs)

    def engine(self, model: str) -> TextEngine:
        engine = self._engines.get(model)
        if engine is None:
            raise NoSuchModelError(model, self.model_names())
        return engine

    async def embed(self, model: str, request: EmbeddingsInput) -> EmbeddingResult:
        embedder = self._embedders.get(model)
        if embedder is None:
            raise NoSuchModelError(model, self.model_names())
        cancelled = threading.Event()
        try:
            async with self._embedding_turns[embedder]:  # requests waiting their turn hold no thread
                work = asyncio.ensure_future(asyncio.to_thread(embedder.embed, request.texts, request.pooling,
                                                               cancelled))
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:  # the client left: stop at the next batch, then give the turn
                    cancelled.set()
                    await asyncio.gather(work, return_exceptions=True)
                    raise
        except EngineError as error:
            raise from_engine_error(error) from error

    async def generate(self, model: str, request: TextGenerationInput, request_id: str) -> AsyncIterator[TextDelta]:
        engine = self.engine(model)
        try:
            prompt = await asyncio.get_running_loop().run_in_executor(_PROMPT_THREADS, render_prompt, engine, request)
            if isinstance(engine, ShardedEngine):
                async for delta in engine.generate(prompt, request.sampling, request_id, request.session):
                    yield TextDelta(delta.delta_text, delta.delta_token_ids, delta.num_prompt_tokens,
                                    delta.num_completion_tokens, delta.finish_reason)
                return
            async for output in engine.generate(prompt, request.sampling, request_id):
                completion = output.outputs[0]
                yield TextDelta(output.delta_text, list(output.delta_token_ids), len(output.prompt_token_ids),
                                len(completion.token_ids), completion.finish_reason if output.finished else None)
        except EngineError as error:
            raise from_engine_error(error) from error

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: engine.stats() for name, engine in self._engines.items()}

    def failures(self) -> dict[str, str]:
        return {name: str(engine.error) for name, engine in self._engines.items() if engine.error is not None}

    def failed_for_good(self) -> list[str]:
        return [name for name, engine in self._engines.items() if engine.error is not None
                and (engine.failed_for_good if isinstance(engine, ShardedEngine) else True)]  # AsyncLLM never restarts

    def degraded(self) -> dict[str, dict[int, str]]:
        return {name: engine.lost_workers for name, engine in self._engines.items()
                if isinstance(engine, ShardedEngine) and engine.lost_workers}

    def events(self) -> dict[str, dict[str, int]]:
        return {name: dict(engine.events) for name, engine in self._engines.items() if isinstance(engine, ShardedEngine)}

    def shutdown(self) -> None:
        for engine in {id(engine): engine for engine in self._engines.values()}.values():
            engine.shutdown()


def _load(folder: Path, engine_options: Mapping[str, Any], parallel: ParallelConfig | None,
          max_restarts: int, attached: RankProcesses | None = None) -> TextEngine | Embedder:
    if is_embedding_checkpoint(folder):
        device = engine_options.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return Embedder(folder, device=device, dtype="float32")
    if parallel is not None and parallel.is_sharded:
        return sharded_engine(EngineConfig(model=str(folder), **engine_options), parallel, max_restarts=max_restarts,
                              attached=attached)
    return AsyncLLM(str(folder), progress=False, **engine_options)


def render_prompt(engine: TextEngine, request: TextGenerationInput) -> str | list[int]:
    """The token ids that the engine gets for a request: the prompt encoded as it is or through the
    chat template; a model loaded without a tokenizer gets the prompt's text as it is."""
    tokenizer = engine.tokenizer
    if request.messages is not None:
        if tokenizer is None:
            raise InvalidRequestError("this model was loaded without a tokenizer; send token ids")
        return tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
    assert request.prompt is not None
    if tokenizer is None:
        return request.prompt
    if request.raw or not tokenizer.has_chat_template:
        return tokenizer.encode(request.prompt)  # as the engine would, but here, off its thread
    return tokenizer.apply_chat_template([{"role": "user", "content": request.prompt}],
                                         add_generation_prompt=True, tokenize=True)

"""The one interface between the HTTP layer and the engines that serve its models.

The routes see ``EngineClient`` only: which models exist and what they do, a generation as an
async iterator of ``TextDelta``s, embeddings, and load figures for ``/metrics``.
``LocalEngines`` runs an ``AsyncLLM`` per text-generation checkpoint in this process, or, when
the checkpoints are sharded (tensor and pipeline parallel), a ``ShardedEngine`` whose ranks are
processes of their own; and an ``Embedder`` per embeddings checkpoint (names mapped to the same
folder share one engine). Past loading, both kinds of text engine are seen through the engine
contract only (``engine/contract.py``): token ids in, token ids out, and the text is made here,
once per request (``text.py``).

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
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from ..cluster.config import ClusterConfig
from ..config import EngineConfig
from ..engine.async_llm import AsyncLLM
from ..engine.contract import Engine, EngineHealth
from ..engine.embedder import EmbeddingResult, Embedder, is_embedding_checkpoint
from ..errors import EngineError, InvalidRequestError
from ..cluster.launch import RankProcesses
from ..disagg.flow import sharded_engine
from .errors import NoSuchModelError, from_engine_error
from .model_fallback import ModelFallback
from .schemas import EmbeddingsInput, TextGenerationInput
from .tool_parsers import DEFAULT_TOOL_FORMAT, detect_tool_format
from .text import TextDelta, stream_text

Task = Literal["text-generation", "text-embeddings"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: Task
    context_window: int  # tokens: max_model_len, or the encoder's longest input
    max_num_seqs: int  # requests the engine runs at once (1 for an embedder: it takes one batch at a time)
    tool_format: str = DEFAULT_TOOL_FORMAT  # how the model writes tool calls (tool_parsers.py)


class EngineClient(Protocol):
    def model_names(self) -> list[str]: ...

    def served_name(self, model: str) -> str:
        """The served model that answers ``model``: itself, or for an unmapped Workers AI name the built-in
        of its task (model_fallback.py); NoSuchModelError when none does."""
        ...

    def model_info(self, model: str) -> ModelInfo:
        """The model that answers ``model`` (``served_name``); raises NoSuchModelError when none does."""
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
        """Models serving with fewer instances than they started with: each lost instance and why."""
        ...

    def events(self) -> dict[str, dict[str, int]]:
        """Per model: how often each failure event happened (a lost instance, a restart, a recomputed request)."""
        ...

    def shutdown(self) -> None: ...


# Chat templates and tokenizers run on these threads, not on the event loop (a long prompt takes
# tens of ms, megabytes take seconds, and no other request would be served meanwhile) nor on an
# engine's thread (its other requests would wait). A few suffice: admission bounds what queues.
PROMPT_THREADS = 4
_PROMPT_THREADS = ThreadPoolExecutor(PROMPT_THREADS, thread_name_prefix="edgewise-prompt")


class LocalEngines:
    """A text engine per text-generation checkpoint (sharded when ``cluster`` says so) and an
    ``Embedder`` per embeddings one."""

    def __init__(self, models: Mapping[str, str | Path], cluster: ClusterConfig | None = None,
                 attached: RankProcesses | None = None, strict_models: bool = False, **engine_options: Any) -> None:
        """``attached``: the driver of the one sharded text model, started by torchrun. ``strict_models``:
        only the names in ``models`` answer, no built-in stands in for an unmapped Workers AI name."""
        self._fallback = ModelFallback(strict=strict_models)
        self._engines: dict[str, Engine] = {}
        self._embedders: dict[str, Embedder] = {}
        engines: dict[Path, Engine] = {}
        embedders: dict[Path, Embedder] = {}
        try:
            for name, folder in models.items():
                path = Path(folder).resolve()
                if is_embedding_checkpoint(path):
                    if path not in embedders:
                        embedders[path] = _load_embedder(path, engine_options)
                    self._embedders[name] = embedders[path]
                    continue
                if path not in engines:
                    engines[path] = _load(path, engine_options, cluster, attached)
                    attached = None  # torchrun started the ranks of one model
                self._engines[name] = engines[path]
            self._embedding_turns = {embedder: asyncio.Lock() for embedder in self._embedders.values()}
        except BaseException:
            self.shutdown()
            raise

    def model_names(self) -> list[str]:
        return [*self._engines, *self._embedders]

    def served_name(self, model: str) -> str:
        return self._fallback.resolve(model, self.model_names())

    def model_info(self, model: str) -> ModelInfo:
        model = self.served_name(model)
        if model in self._embedders:
            return ModelInfo(model, "text-embeddings", self._embedders[model].max_seq_len, 1)
        engine = self.engine(model)
        return ModelInfo(model, "text-generation", engine.max_model_len, engine.max_num_seqs,
                         detect_tool_format(engine.tokenizer))

    def engine(self, model: str) -> Engine:
        engine = self._engines.get(self.served_name(model))
        if engine is None:
            raise NoSuchModelError(model, self.model_names())
        return engine

    async def embed(self, model: str, request: EmbeddingsInput) -> EmbeddingResult:
        embedder = self._embedders.get(self.served_name(model))
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
            prompt_ids = await asyncio.get_running_loop().run_in_executor(_PROMPT_THREADS, render_prompt, engine,
                                                                          request)
            deltas = stream_text(engine, prompt_ids, request.sampling, request_id, request.session)
            async with aclosing(deltas):  # leaving early closes the engine's stream now, not when collected
                async for delta in deltas:
                    yield delta
        except EngineError as error:
            raise from_engine_error(error) from error

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: engine.stats() for name, engine in self._engines.items()}

    def failures(self) -> dict[str, str]:
        healths = self._healths()
        return {name: health.error for name, health in healths.items() if health.error is not None}

    def failed_for_good(self) -> list[str]:
        healths = self._healths()
        return [name for name, health in healths.items() if health.error is not None and health.failed_for_good]

    def degraded(self) -> dict[str, dict[int, str]]:
        return {name: dict(health.lost_instances) for name, health in self._healths().items() if health.lost_instances}

    def events(self) -> dict[str, dict[str, int]]:
        return {name: dict(health.events) for name, health in self._healths().items() if health.events}

    def _healths(self) -> dict[str, EngineHealth]:
        return {name: engine.health() for name, engine in self._engines.items()}

    def shutdown(self) -> None:
        for engine in {id(engine): engine for engine in self._engines.values()}.values():
            engine.shutdown()


def _load_embedder(folder: Path, engine_options: Mapping[str, Any]) -> Embedder:
    device = engine_options.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Embedder(folder, device=device, dtype="float32")


def _load(folder: Path, engine_options: Mapping[str, Any], cluster: ClusterConfig | None,
          attached: RankProcesses | None = None) -> Engine:
    if cluster is not None and cluster.is_sharded:
        return sharded_engine(EngineConfig(model=str(folder), **engine_options), cluster, attached=attached)
    return AsyncLLM(str(folder), progress=False, **engine_options)


def render_prompt(engine: Engine, request: TextGenerationInput) -> list[int]:
    """The token ids that the engine gets for a request: the prompt encoded as it is or through the
    chat template."""
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise InvalidRequestError("this model was loaded without a tokenizer; send token ids")
    tools = [tool.for_template() for tool in request.tools] or None  # as transformers passes tools=
    if request.messages is not None:
        return tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tools=tools, tokenize=True)
    assert request.prompt is not None
    if request.raw or not tokenizer.has_chat_template:
        return tokenizer.encode(request.prompt)  # as the engine would, but here, off its thread
    return tokenizer.apply_chat_template([{"role": "user", "content": request.prompt}],
                                         add_generation_prompt=True, tools=tools, tokenize=True)

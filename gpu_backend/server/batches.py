"""Workers AI's async Batch API: ``?queueRequest=true`` with ``{"requests": [...]}`` queues a batch and
answers ``{status: "queued", request_id, model}`` at once; ``{"request_id": ...}`` polls it.

A poll answers ``queued`` (no item started) or ``running``, then ``{responses: [{id, result, success,
external_reference}], usage}``, each ``result`` what a single run of that item answers. Every item is
checked against the model's schema when the batch is sent, so a malformed batch is refused whole
(400 naming ``requests[i]``); an item that fails only when it runs (a prompt past the context
window, an engine failure) answers ``success: false`` with its ``error: {code, message}``.

Batches are kept on disk (batch_store.py) and run by one background task per app, below
interactive requests: an item starts only when ``Admission.background_slot`` lets it (a running slot
free, under half of them held by batch items), at most ``max_running_items`` at once over all models.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .admission import NoBackgroundSlot
from .batch_store import BatchStore, ItemOutcome, QueuedItem
from .errors import INTERNAL_ERROR_CODE, BadInputError, RequestTooLargeError, ServiceError, UnknownBatchError
from .schemas import parse_embeddings, parse_text_generation

if TYPE_CHECKING:
    from .api import Service

log = logging.getLogger("edgewise.backend")

DEFAULT_RETENTION_S = 24 * 3600.0
MAX_REQUESTS = 500  # items in one batch; Cloudflare documents no count, only the payload cap
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # Workers AI: "Ensure that the total payload is under 10 MB"
MAX_RUNNING_ITEMS = 16
SLOT_POLL_S = 0.05  # while items wait for a slot: interactive requests free slots without telling us
PURGE_EVERY_S = 60.0
RETRY_AFTER_FAILURE_S = 1.0
REFERENCE = "external_reference"
INTERNAL_MESSAGE = "AiError: internal error: the failure is in the backend's log"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

T = TypeVar("T")
ExecuteItem = Callable[["Service", QueuedItem], Awaitable[ItemOutcome]]


@dataclass(frozen=True)
class BatchConfig:
    folder: Path
    retention_s: float = DEFAULT_RETENTION_S  # finished batches' answers are deleted this long after
    max_requests: int = MAX_REQUESTS
    max_payload_bytes: int = MAX_PAYLOAD_BYTES  # the JSON of the requests list
    max_running_items: int = MAX_RUNNING_ITEMS  # over all models; each also needs a background slot

    def __post_init__(self) -> None:
        if self.retention_s <= 0:
            raise ValueError(f"the batch retention must be positive, got {self.retention_s!r} s")
        for name in ("max_requests", "max_payload_bytes", "max_running_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"BatchConfig.{name} must be at least 1, got {getattr(self, name)!r}")


def default_batch_dir() -> Path:
    """``$XDG_STATE_HOME/edgewise/batches`` (``~/.local/state/edgewise/batches``)."""
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "edgewise" / "batches"


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h`` or ``7d`` -> seconds."""
    match = _DURATION.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"{text!r} is not a duration: give a positive number with s, m, h or d, e.g. 24h")
    return float(match[1]) * _SECONDS[match[2]]


def is_batch_call(queue_request: bool, body: Any) -> bool:
    """A batch to queue (``queueRequest``) or one to poll (``request_id``, sent with or without it); the
    batch form sent without ``queueRequest`` is refused, for every task, with what to add."""
    if not queue_request and isinstance(body, dict) and body.get("requests") not in (None, [], "") \
            and "request_id" not in body:
        raise BadInputError("the batch form (requests) runs as an async batch only: send it with "
                            "?queueRequest=true (REST) or {'queueRequest': True} (env.AI.run's options)",
                            param="requests")
    return queue_request or (isinstance(body, dict) and "request_id" in body)


def queue_request(query: str | None) -> bool:
    """The ``queueRequest`` query parameter, as Cloudflare's REST API takes it."""
    if query is None or query.lower() in ("false", "0"):
        return False
    if query.lower() in ("true", "1", ""):
        return True
    raise BadInputError(f"queueRequest must be true or false, got {query!r}", param="queueRequest")


async def batch_answer(service: Service, model: str, task: str, body: Any) -> dict[str, Any]:
    """The run route's answer to a batch call: a poll when ``body`` names a request_id, else a batch queued."""
    if service.batches is None:
        raise BadInputError("this backend keeps no async batches: serve it with `edgewise backend serve` "
                            "(--batch-dir), or create_app(..., batches=BatchConfig(folder))", param="queueRequest")
    if isinstance(body, dict) and "request_id" in body:
        return await service.batches.poll(model, body)
    return await service.batches.submit(model, task, body, service)


class StoreCalls:
    """The store's calls, made on one thread of their own: SQLite's writes, and its waits while another
    backend on the same folder holds the write lock (up to the store's busy timeout), never block the
    event loop, and one thread keeps them in order on the one connection."""

    def __init__(self, store: BatchStore) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgewise-batch-store")

    async def __call__(self, method: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, method, *args)

    def close(self) -> None:
        """Wait for the call in progress, if any (a caller cancelled meanwhile), then close the store."""
        self._thread.shutdown(wait=True)
        self.store.close()


class Batches:
    """The service's batches: the store, and the task that runs their items (``start``/``stop``)."""

    def __init__(self, config: BatchConfig, service: Service, execute: ExecuteItem) -> None:
        self.config = config
        self.store = BatchStore(config.folder, config.retention_s)
        self._calls = StoreCalls(self.store)
        self._runner = BatchRunner(self._calls, service, execute, config.max_running_items)

    async def start(self) -> None:
        self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()
        self._calls.close()

    async def submit(self, model: str, task: str, body: Any, service: Service) -> dict[str, Any]:
        """Queue the batch in ``body`` (checked whole first); the answer names its request_id."""
        items = self._checked_items(model, task, body, service)
        request_id = await self._calls(self.store.add, model, items)
        self._runner.start()  # served without a lifespan: the first batch starts the runner
        self._runner.wake()
        return {"status": "queued", "request_id": request_id, "model": model}

    async def poll(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        request_id = body["request_id"]
        if not isinstance(request_id, str) or not request_id:
            raise BadInputError(f"'request_id' must be the string a queued batch answered, got {request_id!r}",
                                param="request_id")
        self._runner.start()  # after a restart, a poll is the first sign of life
        state = await self._calls(self.store.state, request_id)
        if state is None:
            raise UnknownBatchError(request_id, self.config.retention_s)
        if state.model != model:
            raise BadInputError(f"request_id {request_id} is a batch of {state.model}, not of {model}: poll it at "
                                f".../ai/run/{state.model}", param="request_id")
        return state.answer()

    def _checked_items(self, model: str, task: str, body: Any, service: Service) -> list[tuple[dict[str, Any], Any]]:
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            raise BadInputError("queueRequest takes {\"requests\": [{...inputs...}, ...]} (at least one) to queue a "
                                "batch, or {\"request_id\": \"...\"} to poll one", param="requests")
        if len(requests) > self.config.max_requests:
            raise BadInputError(f"a batch takes at most {self.config.max_requests} requests, got {len(requests)}: "
                                f"split it into several batches", param="requests")
        size = len(json.dumps(requests).encode())
        if size > self.config.max_payload_bytes:
            raise RequestTooLargeError(f"Request is too large: the batch's requests are {size} bytes of JSON; a "
                                       f"batch takes at most {self.config.max_payload_bytes} (Workers AI: under 10 MB)")
        return [_checked_item(index, item, model, task, service) for index, item in enumerate(requests)]


def _checked_item(index: int, item: Any, model: str, task: str, service: Service) -> tuple[dict[str, Any], Any]:
    """(inputs, external_reference) of ``requests[index]``, refused now if it could never run."""
    where = f"requests[{index}]"
    if not isinstance(item, dict):
        raise BadInputError(f"{where} must be an object of inputs, got {type(item).__name__}", param=where)
    inputs = {key: value for key, value in item.items() if key != REFERENCE}
    reference = item.get(REFERENCE)
    if reference is not None and not isinstance(reference, str):
        raise BadInputError(f"{where}.{REFERENCE} must be a string, got {type(reference).__name__}",
                            param=f"{where}.{REFERENCE}")
    if inputs.get("stream"):
        raise BadInputError(f"{where} asks to stream, which a batch cannot (its results are polled): remove "
                            f"'stream'", param=f"{where}.stream")
    try:
        if task == "text-embeddings":
            parse_embeddings(inputs, service.limits)
        else:
            parse_text_generation(inputs, model, None, service.limits)
    except ServiceError as error:
        detail = error.detail if isinstance(error, BadInputError) else error.message
        raise BadInputError(f"{where}: {detail}", param=f"{where}.{error.param}" if error.param else where) from None
    return inputs, reference


class BatchRunner:
    """One task that starts queued items, oldest batch first, whenever their model grants a background slot."""

    def __init__(self, calls: StoreCalls, service: Service, execute: ExecuteItem, max_running: int) -> None:
        self._calls = calls
        self._store = calls.store
        self._service = service
        self._execute = execute
        self._max_running = max_running
        self._task: asyncio.Task[None] | None = None
        self._items: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._purged_at = time.monotonic()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="edgewise-batches")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Cancel the loop and the items running: they stay ``running`` on disk, and run again after a restart."""
        tasks = [task for task in (self._task, *self._items) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:  # noqa: BLE001 - a failing disk must not end the batches for good
                log.exception("the batch runner failed; it tries again in %g s", RETRY_AFTER_FAILURE_S)
                await asyncio.sleep(RETRY_AFTER_FAILURE_S)

    async def _step(self) -> None:
        """Start one item, or wait for a reason to look again."""
        if time.monotonic() - self._purged_at > PURGE_EVERY_S:
            await self._calls(self._store.purge_expired)
            self._purged_at = time.monotonic()
        item = await self._claim() if len(self._items) < self._max_running else None
        if item is None:
            waiting = bool(await self._calls(self._store.queued_models))
            await self._sleep(SLOT_POLL_S if waiting else PURGE_EVERY_S)
            return
        task = asyncio.get_running_loop().create_task(self._run_item(item), name="edgewise-batch-item")
        self._items.add(task)
        task.add_done_callback(self._items.discard)
        await asyncio.sleep(0)  # the item takes its slot before the next one is chosen

    async def _claim(self) -> QueuedItem | None:
        """The oldest queued item of a model that would admit it now, marked running."""
        for model in await self._calls(self._store.queued_models):
            try:
                admitted = self._service.admission.can_admit_background(self._service.client.served_name(model))
            except ServiceError:
                admitted = True  # no such model any more: the item runs, to fail with the reason
            if admitted:
                return await self._calls(self._store.claim_next, model)
        return None

    async def _sleep(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _run_item(self, item: QueuedItem) -> None:
        try:
            outcome = await self._execute(self._service, item)
        except NoBackgroundSlot:  # an interactive request took the slot first
            await self._calls(self._store.requeue, item)
            return
        except Exception:  # noqa: BLE001 - one item's failure is its answer, never the batch's
            log.exception("batch %s item %d failed", item.request_id, item.id)
            outcome = ItemOutcome(error={"code": INTERNAL_ERROR_CODE, "message": INTERNAL_MESSAGE})
        await self._calls(self._store.finish, item, outcome)
        self._wake.set()

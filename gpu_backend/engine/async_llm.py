"""``AsyncLLM``: the engine core on a background thread, with an async iterator of outputs per request.

It serves the engine contract (``contract.Engine``): token ids in, ``EngineOutput``s out, no
text. The engine is single-threaded; only its own thread touches it. Callers send commands (add,
abort) through a queue that the thread drains between steps, and receive outputs on
per-request asyncio queues. Leaving the iterator early (a client went away) aborts the request,
and the thread frees its KV blocks before its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..config import EngineConfig
from ..errors import EngineError
from .contract import EngineHealth
from .core import EngineCore
from .outputs import EngineOutput
from .sampling_params import SamplingParams
from .thread_bridge import post, settle, until_finished

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.05


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # EngineOutput, or an exception that ends the stream


class AsyncLLM:
    def __init__(self, model: str | None = None, *, engine: EngineCore | None = None, device: str = "auto",
                 dtype: str = "auto", progress: bool = True, **engine_options: Any) -> None:
        if engine is None:
            if model is None:
                raise ValueError("AsyncLLM needs a model folder or an engine")
            engine = EngineCore(EngineConfig(model=str(model), device=device, dtype=dtype, **engine_options),
                                progress=progress)
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._stopped = threading.Event()
        self._closing = threading.Lock()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edgewise-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None, session: str | None = None) -> AsyncIterator[EngineOutput]:
        """Yield an output each time the request gains tokens; the last one has ``finished`` set.
        (``session`` is for engines with several instances; this one has one.)"""
        request_id = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        accepted: asyncio.Future = loop.create_future()
        self._send(("add", request_id, prompt, params, stream, accepted))
        finished = False
        try:
            # Inside the try: a caller that leaves before the engine has taken the request must
            # still abort it (the abort follows the add through the command queue).
            await accepted  # raises the engine's validation error, if any
            async for output in until_finished(stream.outputs):
                finished = output.finished
                yield output
        finally:
            refused = accepted.done() and not accepted.cancelled() and accepted.exception() is not None
            if not finished and not refused:
                with contextlib.suppress(EngineError):  # a stopped engine has dropped every request
                    self._send(("abort", request_id, None))

    async def abort(self, request_id: str) -> None:
        """Abort a request and wait until the engine thread has freed its blocks."""
        done = asyncio.get_running_loop().create_future()
        self._send(("abort", request_id, done))
        await done

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.engine.config.max_num_seqs

    def stats(self) -> dict[str, int]:
        manager = self.engine.block_manager
        return {
            "num_running": self.engine.scheduler.num_running,
            "num_waiting": self.engine.scheduler.num_waiting,
            "kv_blocks_free": manager.num_free_blocks,
            "kv_blocks_used": manager.num_used_blocks,
            "num_preemptions": self.engine.scheduler.num_preemptions,
        }

    def health(self) -> EngineHealth:
        """A stopped engine thread never restarts: its error is for good."""
        error = None if self.error is None else str(self.error)
        return EngineHealth(error, failed_for_good=error is not None)

    def shutdown(self) -> None:
        """Stop the engine thread; requests still running end with an EngineError."""
        self._stopped.set()
        self._commands.put(None)
        self._thread.join(timeout=10)
        self._close(EngineError("the engine was shut down"))

    def _send(self, command: tuple) -> None:
        with self._closing:  # a command is either handled or failed by _close, never left waiting
            if self.error is not None:
                raise EngineError(f"the engine stopped: {self.error}")
            self._commands.put(command)

    def _close(self, error: BaseException) -> None:
        """Refuse new commands, then fail every pending command and stream with ``error``."""
        with self._closing:
            self.error = self.error or error
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                if command is not None and command[0] == "add":
                    post(command[4].loop, settle, command[5], EngineError(f"the engine stopped: {error}"))
                elif command is not None and command[2] is not None:
                    post(command[2].get_loop(), settle, command[2], None)
        for request_id in list(self._streams):
            self._deliver(request_id, EngineError(f"the engine stopped: {error}"), done=True)

    # -- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                self._drain_commands(block=not self.engine.has_unfinished_requests())
                if self.engine.has_unfinished_requests():
                    for output in self.engine.step():
                        self._deliver(output.request_id, output, done=output.finished)
        except BaseException as error:  # a bug or a device failure: fail every stream, loudly
            log.exception("engine thread stopped")
            self._close(error)

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=_IDLE_WAIT_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:
            self._handle(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, command: tuple) -> None:
        if command[0] == "add":
            _, request_id, prompt, params, stream, accepted = command
            try:
                self.engine.add_request(prompt, params, request_id)
            except Exception as error:
                post(stream.loop, settle, accepted, error)
                return
            self._streams[request_id] = stream
            post(stream.loop, settle, accepted, None)
        else:
            _, request_id, done = command
            output = self.engine.abort(request_id)
            if output is not None:
                self._deliver(request_id, output, done=True)
            if done is not None:
                post(done.get_loop(), settle, done, None)

    def _deliver(self, request_id: str, item: EngineOutput | BaseException, done: bool) -> None:
        stream = self._streams.pop(request_id, None) if done else self._streams.get(request_id)
        if stream is not None:
            post(stream.loop, stream.outputs.put_nowait, item)

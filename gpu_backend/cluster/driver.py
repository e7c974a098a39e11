"""Rank 0 of a sharded instance: the engine's scheduler and step loop, fed by the service process.

The service sends requests and aborts over a pipe (``multiprocessing`` connection); the driver
adds them to its ``EngineCore`` between steps, runs a step (which sends the step's inputs to every
other rank and runs its own part), and sends back what each request gained: the engine's
``EngineOutput``s as they are, token ids without text (the service makes the text). It speaks
at least once a ``HEARTBEAT_S`` even when idle, so the service can tell a hung instance from a
quiet one.
The messages are ``protocol``'s; a kind of instance adds roles (``roles.DriverRole``) that take the
messages of their own protocol and work after each step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

from ..engine.core import EngineCore
from ..engine.sampling_params import SamplingParams
from .protocol import (AbortRequest, Accepted, AddRequest, Failed, Ready, Rejected, StepDone, Stop, InstanceInfo,
                       InstanceLoad)
from .roles import DriverRole
from .stage_runner import DriverRunner

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05
ROLE_POLL_S = 0.002  # while a role waits on something outside the steps (a KV transfer) and nothing runs
HEARTBEAT_S = 1.0


class DriverPipe:
    """The driver's end of its pipe to the service, which notes when it last spoke."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.last_sent = 0.0

    def send(self, message: object) -> None:
        self.connection.send(message)
        self.last_sent = time.monotonic()


class Driver:
    def __init__(self, engine: EngineCore, runner: DriverRunner, pipe: DriverPipe,
                 roles: Sequence[DriverRole] = ()) -> None:
        self.engine, self.runner, self.pipe, self.roles = engine, runner, pipe, list(roles)
        self._stopping = False

    def serve(self) -> None:
        """Until the service says stop (or goes away); tells the other ranks to stop on the way out."""
        try:
            manager = self.engine.block_manager
            self.pipe.send(Ready(InstanceInfo(self.engine.max_model_len, self.engine.config.max_num_seqs,
                                            manager.num_blocks)))
            while not self._stopping:
                self.serve_once()
        except BaseException as error:
            # Said at once: telling the other ranks to stop could wait on the one that failed.
            self.pipe.send(Failed(f"rank {self.runner.place.rank}: {type(error).__name__}: {error}"))
            raise
        try:
            self.runner.stop()
        except Exception:  # a rank already gone: the instance is being torn down anyway
            log.warning("could not tell every rank to stop", exc_info=True)

    def serve_once(self) -> None:
        """One turn: take the service's messages, run a step, let the roles work, report."""
        busy = self.engine.has_unfinished_requests()
        waiting = any(role.waiting for role in self.roles)
        if self.pipe.connection.poll(0 if busy else ROLE_POLL_S if waiting else IDLE_WAIT_S):
            self._drain()
        outputs = list(self.engine.step()) if self.engine.has_unfinished_requests() else []
        for role in self.roles:
            outputs += role.after_step()
        if outputs or time.monotonic() - self.pipe.last_sent > HEARTBEAT_S:
            self.pipe.send(StepDone(outputs, self._load()))

    def _drain(self) -> None:
        while not self._stopping and self.pipe.connection.poll():
            try:
                message = self.pipe.connection.recv()
            except EOFError:  # the service is gone: nobody to serve
                self._stopping = True
                return
            self._handle(message)

    def _handle(self, message: object) -> None:
        match message:
            case AddRequest(request_id, prompt, params, num_resumed_tokens):
                self._add(request_id, prompt, params, num_resumed_tokens)
            case AbortRequest(request_id):
                self._abort(request_id)
            case Stop():
                self._stopping = True
            case _ if not any(role.handle(message) for role in self.roles):
                raise TypeError(f"no role of this driver takes {type(message).__name__}")

    def _add(self, request_id: str, prompt: str | list[int], params: SamplingParams | None,
             num_resumed_tokens: int) -> None:
        try:
            self.engine.add_request(prompt, params, request_id, num_resumed_tokens=num_resumed_tokens)
        except Exception as error:  # invalid input: the service turns it into the HTTP error
            self.pipe.send(Rejected(request_id, error))
            return
        self.pipe.send(Accepted(request_id))

    def _abort(self, request_id: str) -> None:
        for role in self.roles:
            role.abort(request_id)
        output = self.engine.abort(request_id)
        if output is not None:
            self.pipe.send(StepDone([output], self._load()))

    def _load(self) -> InstanceLoad:
        scheduler, manager = self.engine.scheduler, self.engine.block_manager
        return InstanceLoad(scheduler.num_running, scheduler.num_waiting, manager.num_free_blocks,
                          manager.num_used_blocks, scheduler.num_preemptions)

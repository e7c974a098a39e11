"""Rank 0 of a sharded worker: the engine's scheduler and step loop, fed by the service process.

The service sends requests and aborts over a pipe (``multiprocessing`` connection); the driver
adds them to its ``LLMEngine`` between steps, runs a step (which sends the step's inputs to every
other rank and runs its own part), and sends back what each request gained. It speaks at least
once a ``HEARTBEAT_S`` even when idle, so the service can tell a hung worker from a quiet one.

Messages, service -> driver: ("add", request_id, prompt, params), ("abort", request_id), ("stop",);
in a disaggregated cluster also ("prefill", request_id, prompt_ids, params, (decode worker,
blocks) | None), ("reserve", request_id, prompt_ids, params) and ("admit", request_id,
first_token, prefill worker). Driver -> service: ("ready", WorkerInfo), ("accepted", request_id),
("rejected", request_id, error), ("reserved", request_id, blocks | None), ("step",
[WorkerOutput], WorkerLoad), ("transfer_failed", request_id, why) (a decode worker whose KV did
not arrive: the blocks are free again), ("error", text).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection

from ..disagg.handoff import Cluster, RankTransfers
from ..engine.engine import LLMEngine
from ..engine.outputs import RequestOutput
from ..engine.sampling_params import SamplingParams
from .stage_runner import DriverRunner

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.05
TRANSFER_POLL_S = 0.002  # while a KV transfer lands and nothing else runs
HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class WorkerInfo:
    max_model_len: int
    max_num_seqs: int
    num_kv_blocks: int


@dataclass(frozen=True)
class WorkerLoad:
    num_running: int
    num_waiting: int
    kv_blocks_free: int
    kv_blocks_used: int
    num_preemptions: int


@dataclass(frozen=True)
class WorkerOutput:
    """What one step added to one request (a compact ``RequestOutput``)."""

    request_id: str
    delta_text: str
    delta_token_ids: list[int]
    num_prompt_tokens: int
    num_completion_tokens: int
    finished: bool
    finish_reason: str | None


class Driver:
    def __init__(self, engine: LLMEngine, runner: DriverRunner, connection: Connection, cluster: Cluster) -> None:
        self.engine, self.runner, self.connection = engine, runner, connection
        self.transfers = RankTransfers(cluster, runner.place.rank, runner.control.group)
        self._stopping = False
        self._last_sent = 0.0
        self._handoffs: dict[str, tuple[int, list[int]]] = {}  # prefill: request -> (decode worker, its blocks)
        self._reserved: dict[str, list[int]] = {}  # decode: request -> blocks its KV goes into
        self._landing: dict[str, int] = {}  # decode: request -> its first token, while its KV arrives

    def serve(self) -> None:
        """Until the service says stop (or goes away); tells the other ranks to stop on the way out."""
        try:
            manager = self.engine.block_manager
            self._send(("ready", WorkerInfo(self.engine.max_model_len, self.engine.config.max_num_seqs,
                                            manager.num_blocks)))
            while not self._stopping:
                self._serve_once()
        except BaseException as error:
            # Said at once: telling the other ranks to stop could wait on the one that failed.
            self._send(("error", f"rank {self.runner.place.rank}: {type(error).__name__}: {error}"))
            raise
        try:
            self.runner.stop()
        except Exception:  # a rank already gone: the worker is being torn down anyway
            log.warning("could not tell every rank to stop", exc_info=True)

    def _serve_once(self) -> None:
        busy = self.engine.has_unfinished_requests()
        if self.connection.poll(0 if busy else TRANSFER_POLL_S if self._landing else IDLE_WAIT_S):
            self._drain()
        outputs = self.engine.step() if self.engine.has_unfinished_requests() else []
        self._hand_off(outputs)
        compact = [_compact(output) for output in outputs] + self._land()
        if compact or time.monotonic() - self._last_sent > HEARTBEAT_S:
            self._send(("step", compact, self._load()))
        for request_id, why in self.transfers.reap():
            log.warning("the KV of %s did not reach its decode worker: %s", request_id, why)

    def _drain(self) -> None:
        while not self._stopping and self.connection.poll():
            try:
                message = self.connection.recv()
            except EOFError:  # the service is gone: nobody to serve
                self._stopping = True
                return
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "add":
            _, request_id, prompt, params = message
            try:
                self.engine.add_request(prompt, params, request_id)
            except Exception as error:  # invalid input: the service turns it into the HTTP error
                self._send(("rejected", request_id, error))
                return
            self._send(("accepted", request_id))
        elif kind == "abort":
            self._abort(message[1])
        elif kind == "prefill":
            self._prefill(*message[1:])
        elif kind == "reserve":
            self._reserve(*message[1:])
        elif kind == "admit":
            self._admit(*message[1:])
        elif kind == "stop":
            self._stopping = True

    def _abort(self, request_id: str) -> None:
        self._reserved.pop(request_id, None)
        if self._landing.pop(request_id, None) is not None:
            self.runner.drop_kv(self.transfers, request_id)
        output = self.engine.abort(request_id)
        if output is not None:
            self._hand_off([output])
            self._send(("step", [_compact(output)], self._load()))

    # -- disaggregated: this worker prefills, or decodes what another prefilled -------------------

    def _prefill(self, request_id: str, prompt: list[int], params: SamplingParams,
                 handoff: tuple[int, list[int]] | None) -> None:
        """Compute the prompt and its first token; then (``handoff``) send its KV to that decode worker."""
        try:
            self.engine.add_request(prompt, replace(params, max_tokens=1), request_id, hold_blocks=handoff is not None)
        except Exception as error:
            self._send(("rejected", request_id, error))
            return
        if handoff is not None:
            self._handoffs[request_id] = handoff
        self._send(("accepted", request_id))

    def _hand_off(self, outputs: list[RequestOutput]) -> None:
        """Post the KV sends of the prompts that just ended, in the order of their outputs (the order
        the decode worker posts its receives in), and free their blocks: the sends read copies."""
        for output in outputs:
            handoff = self._handoffs.pop(output.request_id, None) if output.finished else None
            if handoff is None:
                continue
            worker, blocks = handoff
            seq = self.engine.held.get(output.request_id)
            if seq is not None and seq.finish_reason == "length":  # cut at one token: decoding goes on there
                self.runner.send_kv(self.transfers, output.request_id, worker,
                                    seq.block_table[len(seq.block_table) - len(blocks):])
            self.engine.release_blocks(output.request_id)

    def _reserve(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        try:
            blocks = self.engine.reserve(prompt, params, request_id)
        except Exception as error:
            self._send(("rejected", request_id, error))
            return
        if blocks is not None:
            self._reserved[request_id] = blocks
        self._send(("reserved", request_id, blocks))

    def _admit(self, request_id: str, first_token: int, prefill_worker: int) -> None:
        """Post the receives of the prompt's KV into the reserved blocks; it lands in ``_land``."""
        blocks = self._reserved.pop(request_id, None)
        if blocks is None:
            log.error("told to admit %s, which holds no blocks here", request_id)
            return
        self.runner.receive_kv(self.transfers, request_id, prefill_worker, blocks)
        self._landing[request_id] = first_token

    def _land(self) -> list[WorkerOutput]:
        """Requests whose KV arrived join the running batch; a failed transfer frees the blocks and
        is reported (the service applies --on-worker-loss)."""
        outputs = []
        for request_id in list(self._landing):
            arrived = self.transfers.arrived(request_id)
            if arrived is None:
                continue
            first_token = self._landing.pop(request_id)
            if self.runner.land_kv(self.transfers, request_id, arrived[0]):
                output = self.engine.admit(request_id, first_token)
                outputs += [_compact(output)] if output is not None else []
                continue
            self.engine.abort(request_id)
            self._send(("transfer_failed", request_id, arrived[1] or "another rank of this worker did not get "
                                                                    "its share of the KV in time"))
        return outputs

    def _load(self) -> WorkerLoad:
        scheduler, manager = self.engine.scheduler, self.engine.block_manager
        return WorkerLoad(scheduler.num_running, scheduler.num_waiting, manager.num_free_blocks,
                          manager.num_used_blocks, scheduler.num_preemptions)

    def _send(self, message: tuple) -> None:
        self.connection.send(message)
        self._last_sent = time.monotonic()


def _compact(output: RequestOutput) -> WorkerOutput:
    completion = output.outputs[0]
    return WorkerOutput(output.request_id, output.delta_text, list(output.delta_token_ids),
                        len(output.prompt_token_ids), len(completion.token_ids), output.finished,
                        completion.finish_reason if output.finished else None)

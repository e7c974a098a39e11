"""Rank 0 of a sharded worker: the engine's scheduler and step loop, fed by the service process.

The service sends requests and aborts over a pipe (``multiprocessing`` connection); the driver
adds them to its ``LLMEngine`` between steps, runs a step (which sends the step's inputs to every
other rank and runs its own part), and sends back what each request gained. It speaks at least
once a ``HEARTBEAT_S`` even when idle, so the service can tell a hung worker from a quiet one.

Messages, service -> driver: ("add", request_id, prompt, params), ("abort", request_id), ("stop",);
in a disaggregated cluster also ("prefill", request_id, prompt_ids, params, (decode worker,
number of blocks it reserved) | None), ("reserve", request_id, prompt_ids, params), ("kv_chunk",
request_id, prefill worker, first block, number of blocks) (a chunk of KV on its way, relayed in
the order the prefill worker posted it) and ("admit", request_id, first_token).
Driver -> service: ("ready", WorkerInfo), ("accepted", request_id), ("rejected", request_id,
error), ("reserved", request_id, blocks | None), ("step", [WorkerOutput], WorkerLoad, [(request_id,
decode worker, first block, number of blocks)] of the KV chunks posted), ("transfer_failed",
request_id, why) (a decode worker whose KV did not arrive: the blocks are free again), ("error", text).
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


@dataclass
class Outgoing:
    """A prompt whose KV goes to a decode worker as it is computed (on the prefill worker)."""

    decode_worker: int
    num_blocks: int  # blocks the decode worker reserved: the prompt's last ones
    num_sent: int = 0


class Driver:
    def __init__(self, engine: LLMEngine, runner: DriverRunner, connection: Connection, cluster: Cluster) -> None:
        self.engine, self.runner, self.connection = engine, runner, connection
        self.transfers = RankTransfers(cluster, runner.place.rank, runner.control.group)
        self._stopping = False
        self._last_sent = 0.0
        self._handoffs: dict[str, Outgoing] = {}  # prefill: prompts whose KV goes to a decode worker
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
        pushed = self._push_kv() if self._handoffs else []
        compact = [_compact(output) for output in outputs] + self._land()
        if compact or pushed or time.monotonic() - self._last_sent > HEARTBEAT_S:
            self._send(("step", compact, self._load(), pushed))
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
        elif kind == "kv_chunk":
            self._receive_chunk(*message[1:])
        elif kind == "admit":
            self._admit(*message[1:])
        elif kind == "stop":
            self._stopping = True

    def _abort(self, request_id: str) -> None:
        self._reserved.pop(request_id, None)
        self._landing.pop(request_id, None)
        if request_id in self.transfers.receiving:
            self.runner.drop_kv(self.transfers, request_id)
        output = self.engine.abort(request_id)
        if output is not None:
            self._send(("step", [_compact(output)], self._load(), []))

    # -- disaggregated: this worker prefills, or decodes what another prefilled -------------------

    def _prefill(self, request_id: str, prompt: list[int], params: SamplingParams,
                 handoff: tuple[int, int] | None) -> None:
        """Compute the prompt and its first token; ``handoff``: (decode worker, blocks it reserved),
        whose KV goes there as it is computed."""
        try:
            first = replace(params, max_tokens=1, min_tokens=min(params.min_tokens, 1))  # decode does the rest
            self.engine.add_request(prompt, first, request_id, hold_blocks=handoff is not None)
        except Exception as error:
            self._send(("rejected", request_id, error))
            return
        if handoff is not None:
            self._handoffs[request_id] = Outgoing(*handoff)
        self._send(("accepted", request_id))

    def _push_kv(self) -> list[tuple[str, int, int, int]]:
        """Post the sends of each prompt's blocks computed since the last turn (all that is left
        once it is done); free the blocks of prompts that ended. (request, decode worker, first
        block, blocks) of each chunk posted, in the order posted: the decode worker posts its
        receives in that order."""
        pushed = []
        block_size = self.engine.block_manager.block_size
        for request_id, out in list(self._handoffs.items()):
            request, held = self.engine.requests.get(request_id), self.engine.held.get(request_id)
            seq = request.seq if request is not None else held
            offset = -(-seq.num_prompt_tokens // block_size) - out.num_blocks if seq is not None else 0
            if request is not None:
                ready = max(0, min(seq.num_computed_tokens, seq.num_prompt_tokens) // block_size - offset)
            else:  # ended: the rest goes only if decoding goes on (cut at one token, not stopped)
                ready = out.num_blocks if held is not None and held.finish_reason == "length" else out.num_sent
            if ready > out.num_sent:
                blocks = seq.block_table[offset + out.num_sent:offset + ready]
                self.runner.send_kv(self.transfers, request_id, out.decode_worker, blocks)
                pushed.append((request_id, out.decode_worker, out.num_sent, ready - out.num_sent))
                out.num_sent = ready
            if request is None:
                del self._handoffs[request_id]
                self.engine.release_blocks(request_id)
        return pushed

    def _reserve(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        try:
            blocks = self.engine.reserve(prompt, params, request_id)
        except Exception as error:
            self._send(("rejected", request_id, error))
            return
        if blocks is not None:
            self._reserved[request_id] = blocks
        self._send(("reserved", request_id, blocks))

    def _receive_chunk(self, request_id: str, prefill_worker: int, first: int, num_blocks: int) -> None:
        """Post the receives of a chunk the prefill worker sent; a request no longer here (aborted)
        takes it into scratch buffers, so the pair's messages stay in step."""
        blocks = self._reserved.get(request_id)
        dropped = blocks is None
        block_ids = [0] * num_blocks if dropped else blocks[first:first + num_blocks]
        self.runner.receive_kv(self.transfers, request_id, prefill_worker, block_ids)
        if dropped:
            self.runner.drop_kv(self.transfers, request_id)

    def _admit(self, request_id: str, first_token: int) -> None:
        """The prompt is done and every chunk of its KV is posted: it lands in ``_land``."""
        if self._reserved.pop(request_id, None) is not None:
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

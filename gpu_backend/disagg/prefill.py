"""The prefill role of an instance's driver: compute prompts and their first token, hold their
blocks, and push their KV to the decode instance as it is computed.

A prompt with a hand-off keeps its blocks once it is done (``hold_blocks``). After each step,
the blocks completed since the last turn go out (the partial last one with the first token), on
every rank of the instance (``HandoffRank.send``), and the chunks posted are reported to the
service (``KVPushed``, before the step's outputs), which relays them to the decode instance in that
order. Once the prompt is done its blocks are freed (they stay in the prefix cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..cluster.protocol import Accepted, Rejected
from ..engine.core import EngineCore
from ..engine.outputs import EngineOutput
from ..engine.sampling_params import SamplingParams
from .protocol import Handoff, KVChunk, KVPushed, Prefill

if TYPE_CHECKING:
    from ..cluster.stage_runner import DriverRunner
    from .handoff import HandoffRank


@dataclass
class Outgoing:
    """A prompt whose KV goes to a decode instance as it is computed."""

    handoff: Handoff
    num_sent: int = 0


class PrefillRole:
    waiting = False  # its sends go on while the instance computes; nothing waits between steps

    def __init__(self, engine: EngineCore, runner: DriverRunner, kv: HandoffRank,
                 send: Callable[[object], None]) -> None:
        self.engine, self.runner, self.kv, self.send = engine, runner, kv, send
        self._outgoing: dict[str, Outgoing] = {}

    def handle(self, message: object) -> bool:
        match message:
            case Prefill(request_id, prompt, params, handoff, num_resumed_tokens):
                self._prefill(request_id, prompt, params, handoff, num_resumed_tokens)
                return True
        return False

    def after_step(self) -> list[EngineOutput]:
        chunks = self._push() if self._outgoing else []
        if chunks:
            self.send(KVPushed(chunks))
        self.kv.reap()
        return []

    def abort(self, request_id: str) -> None:
        """Nothing to do: an aborted prompt ends, and ``_push`` lets its blocks go."""

    def _prefill(self, request_id: str, prompt: list[int], params: SamplingParams, handoff: Handoff | None,
                 num_resumed_tokens: int) -> None:
        try:
            first = replace(params, max_tokens=1, min_tokens=min(params.min_tokens, 1))  # decode does the rest
            self.engine.add_request(prompt, first, request_id, hold_blocks=handoff is not None,
                                    num_resumed_tokens=num_resumed_tokens)
        except Exception as error:
            self.send(Rejected(request_id, error))
            return
        if handoff is not None:
            self._outgoing[request_id] = Outgoing(handoff)
        self.send(Accepted(request_id))

    def _push(self) -> list[KVChunk]:
        """Post the sends of each prompt's blocks computed since the last turn (all that is left
        once it is done); free the blocks of prompts that ended. The chunks posted, in order: the
        decode instance posts its receives in that order."""
        chunks = []
        block_size = self.engine.block_manager.block_size
        for request_id, out in list(self._outgoing.items()):
            request, held = self.engine.requests.get(request_id), self.engine.held.get(request_id)
            seq = request.seq if request is not None else held
            num_blocks = out.handoff.num_blocks  # the decode instance reserved the prompt's last blocks
            offset = -(-seq.num_prompt_tokens // block_size) - num_blocks if seq is not None else 0
            if request is not None:
                ready = max(0, min(seq.num_computed_tokens, seq.num_prompt_tokens) // block_size - offset)
            else:  # ended: the rest goes only if decoding goes on (cut at one token, not stopped)
                ready = num_blocks if held is not None and held.finish_reason == "length" else out.num_sent
            if ready > out.num_sent:
                decode = out.handoff.decode_instance
                self.runner.call_everywhere(self.kv, "send", request_id, decode,
                                            seq.block_table[offset + out.num_sent:offset + ready])
                chunks.append(KVChunk(request_id, self.kv.instance, decode, out.num_sent, ready - out.num_sent))
                out.num_sent = ready
            if request is None:
                del self._outgoing[request_id]
                self.engine.release_blocks(request_id)
        return chunks

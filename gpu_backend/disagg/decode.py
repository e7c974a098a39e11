"""The decode role of an instance's driver: reserve blocks for a prompt computed elsewhere, receive
its KV chunk by chunk, land it, and admit the request into the running batch.

Every chunk the service relays is received on every rank of the instance (``HandoffRank.receive``)
into buffers, also for a request no longer here (aborted: into scratch buffers, dropped), so the
pair's messages stay in step. Told the first token (``Admit``), the request lands once this
rank's share of every chunk arrived: the ranks agree that all of it did (``HandoffRank.land``),
the KV is written into the reserved blocks, and the sequence joins the running batch. A transfer
that failed frees the blocks and is reported (``TransferFailed``); the instance decodes on meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..cluster.protocol import Rejected
from ..engine.core import EngineCore
from ..engine.outputs import EngineOutput
from ..engine.sampling_params import SamplingParams
from .protocol import Admit, KVChunk, Reserve, Reserved, TransferFailed

if TYPE_CHECKING:
    from ..cluster.stage_runner import DriverRunner
    from .handoff import HandoffRank


class DecodeRole:
    def __init__(self, engine: EngineCore, runner: DriverRunner, kv: HandoffRank,
                 send: Callable[[object], None]) -> None:
        self.engine, self.runner, self.kv, self.send = engine, runner, kv, send
        self._reserved: dict[str, list[int]] = {}  # request -> the blocks its KV goes into
        self._landing: dict[str, int] = {}  # request -> its first token, while its KV arrives

    @property
    def waiting(self) -> bool:
        return bool(self._landing)

    def handle(self, message: object) -> bool:
        match message:
            case Reserve(request_id, prompt, params, num_resumed_tokens):
                self._reserve(request_id, prompt, params, num_resumed_tokens)
            case KVChunk():
                self._receive(message)
            case Admit(request_id, first_token):
                if self._reserved.pop(request_id, None) is not None:  # lands in ``after_step``
                    self._landing[request_id] = first_token
            case _:
                return False
        return True

    def after_step(self) -> list[EngineOutput]:
        outputs = self._land()
        self.kv.reap()
        return outputs

    def abort(self, request_id: str) -> None:
        self._reserved.pop(request_id, None)
        self._landing.pop(request_id, None)
        if self.kv.is_receiving(request_id):
            self.runner.call_everywhere(self.kv, "drop", request_id)

    def _reserve(self, request_id: str, prompt: list[int], params: SamplingParams, num_resumed_tokens: int) -> None:
        try:
            blocks = self.engine.reserve(prompt, params, request_id, num_resumed_tokens)
        except Exception as error:
            self.send(Rejected(request_id, error))
            return
        if blocks is not None:
            self._reserved[request_id] = blocks
        self.send(Reserved(request_id, blocks))

    def _receive(self, chunk: KVChunk) -> None:
        """Post the receives of a chunk; a request no longer here takes it into scratch buffers."""
        blocks = self._reserved.get(chunk.request_id)
        dropped = blocks is None
        block_ids = [0] * chunk.num_blocks if dropped else blocks[chunk.first_block:chunk.first_block + chunk.num_blocks]
        self.runner.call_everywhere(self.kv, "receive", chunk.request_id, chunk.prefill_instance, block_ids)
        if dropped:
            self.runner.call_everywhere(self.kv, "drop", chunk.request_id)

    def _land(self) -> list[EngineOutput]:
        """Requests whose KV arrived join the running batch; a failed transfer frees the blocks and
        is reported (the service applies --on-instance-loss)."""
        outputs = []
        for request_id in list(self._landing):
            arrived = self.kv.arrived(request_id)
            if arrived is None:
                continue
            first_token = self._landing.pop(request_id)
            if self.runner.call_everywhere(self.kv, "land", request_id):
                output = self.engine.admit(request_id, first_token)
                outputs += [output] if output is not None else []
                continue
            self.engine.abort(request_id)
            self.send(TransferFailed(request_id, arrived[1] or "another rank of this instance did not get its share "
                                                                "of the KV in time"))
        return outputs

"""A ``ShardedEngine`` over in-memory pipes, with the test playing each instance's driver: no process
is spawned, and every message between the service and the drivers is seen as the typed message it is."""

from __future__ import annotations

import asyncio
from multiprocessing import Pipe
from multiprocessing.connection import Connection

from gpu_backend.engine.outputs import EngineOutput
from gpu_backend.cluster.launch import RankProcesses
from gpu_backend.cluster.protocol import Ready, InstanceInfo, InstanceLoad
from gpu_backend.config import EngineConfig

WAIT_S = 10.0  # generous: a busy 2-core machine
CONFIG = EngineConfig(model="no-checkpoint", device="cpu", skip_tokenizer_init=True)  # token ids only
INFO = InstanceInfo(max_model_len=256, max_num_seqs=8, num_kv_blocks=64)
LOAD = InstanceLoad(num_running=1, num_waiting=0, kv_blocks_free=60, kv_blocks_used=4, num_preemptions=0)


class FakeDriver:
    """The driver's end of one instance's pipe."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    async def expect(self, kind: type) -> object:
        """The next message the service sent this instance, which must be a ``kind``."""
        if not await asyncio.to_thread(self.connection.poll, WAIT_S):
            raise AssertionError(f"no {kind.__name__} came within {WAIT_S:g} s")
        message = self.connection.recv()
        assert isinstance(message, kind), f"expected a {kind.__name__}, got {message!r}"
        return message

    def say(self, message: object) -> None:
        self.connection.send(message)

    def unread(self) -> list[object]:
        messages = []
        while self.connection.poll(0):
            messages.append(self.connection.recv())
        return messages


def attached_world(num_instances: int) -> tuple[RankProcesses, list[FakeDriver]]:
    """One rank per instance, started by nobody (as torchrun's are), each driver ready at once."""
    pipes = [Pipe() for _ in range(num_instances)]
    for _, driver_end in pipes:
        driver_end.send(Ready(INFO))
    ranks = RankProcesses([], [service for service, _ in pipes], [range(w, w + 1) for w in range(num_instances)])
    return ranks, [FakeDriver(driver_end) for _, driver_end in pipes]


def output(request_id: str, token_ids: list[int], num_completion_tokens: int, finish_reason: str | None = None,
           num_prompt_tokens: int = 5) -> EngineOutput:
    """What one step of an instance added to a request."""
    return EngineOutput(request_id, tuple(token_ids), num_prompt_tokens, num_completion_tokens,
                        finish_reason=finish_reason)


async def collect(stream) -> list:
    return [item async for item in stream]

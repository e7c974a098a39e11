"""The service's side of one request on a sharded cluster: its queue of outputs and its progress,
and the table of the running ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.outputs import EngineOutput
from ..engine.sampling_params import SamplingParams


@dataclass
class Stream:
    """One request's way back to its client, and what it takes to submit it again."""

    request_id: str  # the client's
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # EngineOutput, or the exception that ends the stream
    accepted: asyncio.Future
    instance: int  # the instance whose outputs the client gets now
    attempt: int = 0  # times it was submitted again after a lost instance or a failed transfer
    # where it goes on once ``instance`` gave its last output (disaggregated: the decode instance,
    # which takes over after the first token); None: it ends on ``instance``
    next_instance: int | None = None
    flow_state: Any = None  # the submission flow's own record of this submission (``flow``)
    abandoned: bool = False  # the client left while an instance still held it for the next one
    # for recomputing it after a lost world: what was asked, and what the client has had
    prompt: str | list[int] = ""
    prompt_len: int = 0  # in tokens (characters for a text prompt without a tokenizer), for the router
    session: str | None = None
    params: SamplingParams | None = None
    generated: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    resumed_from: int = 0  # tokens generated before the request was submitted again
    submission: asyncio.Task | None = None  # routing it and handing it to its instances

    @property
    def wire_id(self) -> str:
        """The id the instances know this submission by: a request submitted again gets a new one, so
        what the earlier submission still sends is told apart and dropped."""
        return self.request_id if not self.attempt else f"{self.request_id}#{self.attempt}"

    def as_first_submitted(self, output: EngineOutput) -> EngineOutput:
        """Count a recomputed request's tokens as the client's request has them, under its own id."""
        self.generated += output.new_token_ids
        if not self.resumed_from:
            self.num_prompt_tokens = output.num_prompt_tokens
            return replace(output, request_id=self.request_id)
        return replace(output, request_id=self.request_id, num_prompt_tokens=self.num_prompt_tokens,
                       num_completion_tokens=output.num_completion_tokens + self.resumed_from)


class StreamTable:
    """The running requests' streams, by the client's id and by their submission's (wire) id;
    read and changed under the engine's lock."""

    def __init__(self) -> None:
        self._by_request: dict[str, Stream] = {}
        self._by_wire: dict[str, Stream] = {}

    def add(self, stream: Stream) -> None:
        self._by_request[stream.request_id] = self._by_wire[stream.wire_id] = stream

    def forget(self, stream: Stream) -> None:
        if self._by_request.get(stream.request_id) is stream:
            del self._by_request[stream.request_id]
        if self._by_wire.get(stream.wire_id) is stream:
            del self._by_wire[stream.wire_id]

    def holds(self, stream: Stream) -> bool:
        return self._by_request.get(stream.request_id) is stream

    def get(self, request_id: str) -> Stream | None:
        return self._by_request.get(request_id)

    def by_wire(self, wire_id: str) -> Stream | None:
        """The stream an instance's message is about (None: an earlier submission, or gone)."""
        return self._by_wire.get(wire_id)

    def all(self) -> list[Stream]:
        return list(self._by_request.values())

    def take_all(self) -> list[Stream]:
        """Every stream, forgotten."""
        streams = self.all()
        self._by_request, self._by_wire = {}, {}
        return streams


def resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)

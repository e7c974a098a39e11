"""The service's side of one request on a sharded cluster: its queue of outputs and its progress."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from ..engine.sampling_params import SamplingParams
from .driver import WorkerOutput


@dataclass
class Stream:
    """One request's way back to its client, and what it takes to submit it again."""

    request_id: str  # the client's
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue  # WorkerOutput, or the exception that ends the stream
    accepted: asyncio.Future
    worker: int  # the worker whose outputs the client gets now
    attempt: int = 0  # times it was submitted again after a lost worker or a failed transfer
    # disaggregated: the prefill worker, the decode worker that takes over after the first token
    # and its blocks
    prefill_worker: int | None = None
    decode_worker: int | None = None
    reserved: asyncio.Future | None = None
    prefilling: bool = False  # the prefill worker has the request
    abandoned: bool = False  # the client left while the prompt was prefilling
    # for recomputing it after a lost world: what was asked, and what the client has had
    prompt: str | list[int] = ""
    prompt_len: int = 0  # in tokens (characters for a text prompt without a tokenizer), for the router
    session: str | None = None
    params: SamplingParams | None = None
    generated: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    resumed_from: int = 0  # tokens generated before the request was submitted again
    submission: asyncio.Task | None = None  # routing it and handing it to its workers

    @property
    def wire_id(self) -> str:
        """The id the workers know this submission by: a request submitted again gets a new one, so
        what the earlier submission still sends is told apart and dropped."""
        return self.request_id if not self.attempt else f"{self.request_id}#{self.attempt}"

    def as_first_submitted(self, output: WorkerOutput) -> WorkerOutput:
        """Count a recomputed request's tokens as the client's request has them, under its own id."""
        self.generated += output.delta_token_ids
        if not self.resumed_from:
            self.num_prompt_tokens = output.num_prompt_tokens
            return replace(output, request_id=self.request_id)
        return replace(output, request_id=self.request_id, num_prompt_tokens=self.num_prompt_tokens,
                       num_completion_tokens=output.num_completion_tokens + self.resumed_from)


def resolve(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)

"""One request's tokens and its place in the engine: status, KV blocks, and how much is computed."""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterable
from typing import Any, Literal

from ..errors import InvalidRequestError
from .sampling_params import SamplingParams

FinishReason = Literal["stop", "length", "abort"]

# Stands in for a token that was sampled on the device but not read back yet: the engine
# schedules the next step before the last one's tokens reach the host (see engine.py).
PENDING_TOKEN = -1

_next_seq_id = itertools.count()
_next_arrival = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Prompt plus generated tokens, with the KV bookkeeping the scheduler and model runner share.

    Invariant while unfinished: ``num_computed_tokens < num_tokens``; the tokens in
    ``token_ids[num_computed_tokens:]`` have no KV yet (a prompt's rest, or the last sampled token).
    """

    def __init__(self, token_ids: Iterable[int], sampling_params: SamplingParams | None = None, *,
                 request_id: str | None = None, seq_id: int | None = None) -> None:
        self.token_ids: list[int] = list(token_ids)
        if not self.token_ids:
            raise InvalidRequestError("the prompt is empty: it needs at least one token")
        self.seq_id: int = next(_next_seq_id) if seq_id is None else seq_id
        self.request_id: str = str(self.seq_id) if request_id is None else request_id
        self.num_prompt_tokens: int = len(self.token_ids)
        self.sampling_params: SamplingParams = sampling_params or SamplingParams()
        self.status = SequenceStatus.WAITING
        self.finish_reason: FinishReason | None = None
        # FIFO position for scheduling and preemption; survives preemption, unlike block state.
        self.arrival_order: int = next(_next_arrival)
        self.arrival_time: float = time.monotonic()
        self.block_table: list[int] = []
        self.num_computed_tokens: int = 0  # tokens whose KV is stored in block_table's blocks
        self.num_cached_tokens: int = 0  # prompt tokens the prefix cache served at the first admission
        self.num_preemptions: int = 0
        # Chained hashes of the leading full blocks of token_ids, filled lazily by the block
        # manager. They depend on token content only, so they stay valid across preemption.
        self.block_hashes: list[bytes] = []
        self.output_logprobs: list[Any] = []  # engine-owned: one entry per generated token
        self.has_pending_token = False  # token_ids[-1] is PENDING_TOKEN until resolve_pending_token
        # A prefill instance's sequence keeps its blocks after it finishes, until its KV has been sent.
        self.holds_blocks = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def last_token_id(self) -> int:
        return self.token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def is_prefill(self) -> bool:
        """True while prompt tokens (or tokens to recompute after preemption) remain besides the last."""
        return self.num_uncomputed_tokens > 1 or self.num_computed_tokens < self.num_prompt_tokens

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def append_pending_token(self) -> None:
        """Count a sampled token whose value is still on the device; at most one at a time."""
        if self.has_pending_token:
            raise RuntimeError(f"{self} already has a pending token")
        self.token_ids.append(PENDING_TOKEN)
        self.has_pending_token = True

    def drop_pending_token(self) -> None:
        """Forget a pending token nobody will read (the request was aborted)."""
        if self.has_pending_token:
            self.token_ids.pop()
            self.has_pending_token = False

    def resolve_pending_token(self, token_id: int) -> None:
        if not self.has_pending_token:
            raise RuntimeError(f"{self} has no pending token")
        self.token_ids[-1] = token_id
        self.has_pending_token = False

    def __repr__(self) -> str:
        return (f"Sequence(seq_id={self.seq_id}, request_id={self.request_id!r}, status={self.status.value}, "
                f"num_tokens={self.num_tokens}, num_computed_tokens={self.num_computed_tokens}, "
                f"blocks={len(self.block_table)})")

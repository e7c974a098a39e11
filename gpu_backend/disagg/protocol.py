"""The messages of a disaggregated cluster, on top of ``cluster.protocol``'s and on the same pipes.

Service -> prefill driver: ``Prefill``. Service -> decode driver: ``Reserve``, then each
``KVChunk`` the prefill instance posted (relayed in the order it posted them), then ``Admit``.
Prefill driver -> service: ``KVPushed`` after a step that posted chunks (sent before that
step's ``StepDone``). Decode driver -> service: ``Reserved``, and ``TransferFailed`` when a
request's KV did not arrive (its blocks are free again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class Handoff:
    """Where a prompt's KV goes: the decode instance, and the blocks it reserved (the prompt's last ones)."""

    decode_instance: int
    num_blocks: int


@dataclass(frozen=True)
class Prefill:
    """Compute the prompt and its first token; with a ``handoff``, push its KV there as it is computed."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    handoff: Handoff | None
    num_resumed_tokens: int = 0  # the prompt ends with tokens generated before (EngineCore.add_request)


@dataclass(frozen=True)
class Reserve:
    request_id: str
    prompt: list[int]
    params: SamplingParams
    num_resumed_tokens: int = 0


@dataclass(frozen=True)
class Reserved:
    request_id: str
    blocks: list[int] | None  # None: no blocks are free now (the service asks again)


@dataclass(frozen=True)
class KVChunk:
    """Blocks ``first_block .. first_block + num_blocks`` of the request's reserved blocks, posted by
    the prefill instance to the decode instance."""

    request_id: str
    prefill_instance: int
    decode_instance: int
    first_block: int
    num_blocks: int


@dataclass(frozen=True)
class KVPushed:
    chunks: list[KVChunk]  # in the order they were posted


@dataclass(frozen=True)
class Admit:
    """The prompt is done and every chunk of its KV was relayed: land it, then decode from ``first_token``."""

    request_id: str
    first_token: int


@dataclass(frozen=True)
class TransferFailed:
    request_id: str
    why: str

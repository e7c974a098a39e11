"""The one contract between the service and every engine that generates text.

``AsyncLLM`` (the engine on a thread of this process) and ``ShardedEngine`` (ranks in processes
of their own: colocated replicas, or prefill and decode instances) both take token ids and stream
``EngineOutput``s: each step's new ids, the counts and the finish reason, never text. The service
makes the text, once per request, from the ids whichever instance sampled them (``server/text.py``),
so it cannot differ between one process, a sharded model and a disaggregated one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer
    from .outputs import EngineOutput
    from .sampling_params import SamplingParams


@dataclass(frozen=True)
class EngineHealth:
    """How an engine is doing, for ``/healthz`` and ``/metrics``."""

    error: str | None = None  # why it stopped serving; None while it serves
    failed_for_good: bool = False  # no restart will bring it back: only restarting the backend does
    lost_instances: Mapping[int, str] = field(default_factory=dict)  # lost while the others serve on, and why
    events: Mapping[str, int] = field(default_factory=dict)  # failure events so far (lost instance, restart ...)


class Engine(Protocol):
    tokenizer: Tokenizer | None  # the service renders prompts and makes text with it

    @property
    def max_model_len(self) -> int: ...

    @property
    def max_num_seqs(self) -> int:
        """Requests it runs at once."""
        ...

    def generate(self, prompt_ids: list[int], params: SamplingParams | None, request_id: str,
                 session: str | None = None) -> AsyncGenerator[EngineOutput, None]:
        """Stream one request; the last output has ``finish_reason`` set. Leaving the iterator early
        (a client gone, a stop string found) aborts it on every instance and frees its KV blocks.
        ``session``: requests naming the same one go to the same instances, where it matters."""
        ...

    def stats(self) -> dict[str, int]:
        """Load: num_running, num_waiting, kv_blocks_free, kv_blocks_used, num_preemptions."""
        ...

    def health(self) -> EngineHealth: ...

    def shutdown(self) -> None:
        """Stop; requests still running end with an EngineError."""
        ...

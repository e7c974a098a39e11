"""The service's bounded queue: how many requests a model may hold at once before new ones get 429.

A model admits what its engine runs at once (``max_num_seqs``; one batch for an embedder) plus
``max_queue`` waiting behind them; past that the request is refused with ``OverloadedError``
(429 + ``Retry-After``, Workers AI's 3040) before it costs anything, instead of queueing without
bound. A slot is only ever held through ``Admission.slot``, a context manager, so no path
(an exception, a client that leaves, a cancelled task) can keep one.

A request sent with Workers AI's ``rejectIfBusy`` never queues: ``slot(model, reject_if_busy=True)``
refuses it at once (429, 3040) when every running slot is taken, even though the queue has room.

Async batch items (batches.py) run below interactive requests: ``background_slot`` admits one only
while a running slot is free (so no interactive request is waiting) and batch items hold fewer than
half of the model's running slots (at least one), so a request that arrives finds a slot or waits
behind at most one generation's worth of batch work, never behind a whole batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import OverloadedError

RETRY_AFTER_S = 1
BUSY_MESSAGE = "Capacity temporarily exceeded, please try again."  # Workers AI's words for rejectIfBusy


class NoBackgroundSlot(Exception):
    """A batch item found no slot it may take: it waits in its batch, this is no error for anyone."""


class Admission:
    def __init__(self, max_queue: int, capacity: Callable[[str], int]) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = max_queue
        self._capacity = capacity  # model -> requests its engine runs at once
        self._in_flight: Counter[str] = Counter()
        self._background: Counter[str] = Counter()  # batch items among _in_flight

    def limit(self, model: str) -> int:
        return self._capacity(model) + self.max_queue

    def has_free_slot(self, model: str) -> bool:
        """Whether a request admitted now would run at once rather than wait in the queue."""
        return self._in_flight[model] < self._capacity(model)

    def refuse_if_busy(self, model: str) -> None:
        """``rejectIfBusy``: raises OverloadedError (Workers AI's 3040) when the request would have to queue."""
        if not self.has_free_slot(model):
            raise OverloadedError(BUSY_MESSAGE, retry_after_s=RETRY_AFTER_S)

    @contextmanager
    def slot(self, model: str, reject_if_busy: bool = False) -> Iterator[None]:
        """Hold one of ``model``'s slots for the block; raises OverloadedError when none is left, or, with
        ``reject_if_busy``, when the request would have to queue."""
        if reject_if_busy:
            self.refuse_if_busy(model)
        limit = self.limit(model)
        if self._in_flight[model] >= limit:
            raise OverloadedError(f"AiError: {model} is overloaded: {limit} requests are already running or "
                                  f"queued; retry in {RETRY_AFTER_S} s", retry_after_s=RETRY_AFTER_S)
        self._in_flight[model] += 1
        try:
            yield
        finally:
            self._in_flight[model] -= 1

    def background_limit(self, model: str) -> int:
        """Batch items the model may run at once: under half of its running slots, at least one."""
        return max(1, self._capacity(model) // 2)

    def can_admit_background(self, model: str) -> bool:
        """Whether a batch item may start now: a running slot is free and batch items hold under their share."""
        return self.has_free_slot(model) and self._background[model] < self.background_limit(model)

    @contextmanager
    def background_slot(self, model: str) -> Iterator[None]:
        """Hold one of ``model``'s slots for a batch item; raises NoBackgroundSlot unless ``can_admit_background``."""
        if not self.can_admit_background(model):
            raise NoBackgroundSlot(model)
        self._in_flight[model] += 1
        self._background[model] += 1
        try:
            yield
        finally:
            self._in_flight[model] -= 1
            self._background[model] -= 1

    def in_flight(self, model: str) -> int:
        return self._in_flight[model]

    def total_in_flight(self) -> int:
        return sum(self._in_flight.values())

    def queued(self, model: str) -> int:
        """Requests admitted beyond what the engine runs at once."""
        return max(0, self._in_flight[model] - self._capacity(model))

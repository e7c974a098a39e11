"""Per-invocation state the runtime hands to the SDK: the worker's env, the execution context, limits."""

from __future__ import annotations

import contextvars
from typing import Any

current_env: contextvars.ContextVar[Any] = contextvars.ContextVar("workers_env", default=None)
current_ctx: contextvars.ContextVar[Any] = contextvars.ContextVar("workers_ctx", default=None)


class SubrequestLimitError(RuntimeError):
    """Raised by ``fetch`` past the per-request subrequest limit, as Cloudflare does."""


class SubrequestBudget:
    """Counts outbound subrequests of one incoming request."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit, self.used = limit, used

    def take(self) -> None:
        if self.used >= self.limit:
            raise SubrequestLimitError(
                f"Too many subrequests: this request already made {self.used} "
                f"(limit {self.limit}; raise [edgewise.limits] max_subrequests to allow more)"
            )
        self.used += 1


current_subrequests: contextvars.ContextVar[SubrequestBudget | None] = contextvars.ContextVar(
    "workers_subrequests", default=None
)

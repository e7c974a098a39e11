"""Per-invocation state the runtime hands to the SDK: the worker's env, the execution context, limits."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

current_env: contextvars.ContextVar[Any] = contextvars.ContextVar("workers_env", default=None)
current_ctx: contextvars.ContextVar[Any] = contextvars.ContextVar("workers_ctx", default=None)


class SubrequestLimitError(RuntimeError):
    """Raised by ``fetch`` past the per-request subrequest limit, as Cloudflare does."""


@dataclass
class SubrequestBudget:
    """Counts outbound subrequests of one incoming request."""

    limit: int
    used: int = field(default=0)

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

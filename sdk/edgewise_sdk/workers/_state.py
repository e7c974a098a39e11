"""Per-invocation state the runtime hands to the SDK: the worker's env, the execution context, limits.

One context variable holds all of it: setting and resetting a context variable is the costly
part, and every request does it once.
"""

from __future__ import annotations

import contextvars
from typing import Any


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


class Invocation:
    """What the code running now may reach: ``env``, ``ctx``, the subrequest budget, its log records."""

    __slots__ = ("env", "ctx", "subrequests", "logs")

    def __init__(self, env: Any = None, ctx: Any = None, subrequests: SubrequestBudget | None = None,
                 logs: list[dict[str, Any]] | None = None) -> None:
        self.env, self.ctx, self.subrequests, self.logs = env, ctx, subrequests, logs


current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("workers_invocation", default=None)


def env() -> Any:
    invocation = current.get()
    return None if invocation is None else invocation.env


def ctx() -> Any:
    invocation = current.get()
    return None if invocation is None else invocation.ctx


def subrequests() -> SubrequestBudget | None:
    invocation = current.get()
    return None if invocation is None else invocation.subrequests

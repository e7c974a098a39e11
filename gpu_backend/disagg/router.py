"""Which worker serves a request: token-aware load balancing, with session affinity.

A worker's load is counted in tokens, as Cloudflare's load balancer does, not in requests. A
prompt still to compute counts all its tokens on the worker computing it. A decoding request
counts the tokens its KV holds, since every step reads them, on the worker decoding it; a
prompt whose KV is on its way counts on its decode worker already. Ties go to the worker with
the fewest KV blocks in use.

A request that names a session (the ``x-session-affinity`` header) goes back to the workers its
session used last, whose prefix caches hold the conversation so far. The sessions remembered
are bounded: the least recently used are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from ..errors import WorkerLostError

MAX_SESSIONS = 4096


class RoutedRequest(Protocol):
    worker: int  # the worker serving it now
    decode_worker: int | None  # disaggregated: where it decodes, once its prompt is computed
    prompt_len: int
    generated: list[int]


class Load(Protocol):
    kv_blocks_used: int


class Router:
    def __init__(self, roles: Sequence[str], max_sessions: int = MAX_SESSIONS) -> None:
        self.roles = list(roles)
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, dict[str, int]] = OrderedDict()

    def pick(self, role: str, requests: Iterable[RoutedRequest], loads: Sequence[Load],
             session: str | None = None, unavailable: Collection[int] = ()) -> int:
        """The worker in ``role`` for a new request, other than the ``unavailable`` ones (lost, or
        with no working link to the request's other worker); remembered for ``session``."""
        remembered = self._sessions.get(session, {}) if session else {}
        worker = remembered.get(role)
        if worker is None or worker in unavailable:
            candidates = [w for w, own in enumerate(self.roles) if own == role and w not in unavailable]
            if not candidates:
                raise WorkerLostError(f"no {role} worker is serving")
            tokens = token_loads(requests, len(self.roles))
            worker = min(candidates, key=lambda w: (tokens[w], loads[w].kv_blocks_used))
        if session:
            self._sessions.setdefault(session, {})[role] = worker
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return worker


def token_loads(requests: Iterable[RoutedRequest], num_workers: int) -> list[int]:
    """Per worker: the prompt tokens it has still to compute plus the tokens its decoding requests hold."""
    tokens = [0] * num_workers
    for request in requests:
        held = request.prompt_len + len(request.generated)
        if request.decode_worker is not None and request.decode_worker != request.worker:
            tokens[request.worker] += request.prompt_len  # prefilling it
            tokens[request.decode_worker] += request.prompt_len  # its KV is coming
        else:
            tokens[request.worker] += held
    return tokens

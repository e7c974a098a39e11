"""Which instance serves a request: token-aware load balancing, prefix-cache aware, with session affinity.

An instance's load is counted in tokens, as Cloudflare's load balancer does, not in requests. A
prompt still to compute counts all its tokens on the instance computing it. A generating request
counts the tokens its KV holds, since every step reads them, on the instance generating it; a
request that goes on to another instance once its prompt is computed (disaggregated: a decode
instance, which the KV is sent to) counts its prompt there already.

Instances have roles (``InstanceSpec.role``), and a request is routed to one instance of a role at a
time. An instance whose prefix cache likely holds the start of the prompt saves those tokens (it
skips computing them, or, if it receives the KV, reserves them from its cache). The router
keeps a bounded index of the block-aligned prompt prefixes it sent to each instance (``PrefixIndex``,
an estimate: the instance may have evicted them since) and picks the instance with the least load
minus the tokens it would save. Ties go to the instance with the fewest KV blocks in use.

A request that names a session (the ``x-session-affinity`` header) goes back to the instances its
session used last, whose prefix caches hold the conversation so far. The sessions remembered
are bounded: the least recently used are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

from ..errors import InstanceLostError

MAX_SESSIONS = 4096
MAX_PREFIX_BLOCKS = 1 << 16  # block hashes remembered, over every instance


class RoutedRequest(Protocol):
    instance: int  # the instance serving it now (-1 until it is routed)
    next_instance: int | None  # where it goes on once its prompt is computed (disaggregated: the decode instance)
    prompt_len: int
    generated: list[int]


class Load(Protocol):
    kv_blocks_used: int


class PrefixIndex:
    """Which instances were sent which block-aligned prompt prefixes, the least recently used forgotten first.

    A prefix is named by a chain hash over its full blocks, as a prefix cache names its blocks."""

    def __init__(self, block_size: int, max_blocks: int = MAX_PREFIX_BLOCKS) -> None:
        self.block_size, self.max_blocks = block_size, max_blocks
        self._instances: OrderedDict[int, set[int]] = OrderedDict()  # prefix hash -> instances sent it

    def hashes(self, token_ids: Sequence[int]) -> list[int]:
        chain, previous = [], 0
        for start in range(0, len(token_ids) - self.block_size + 1, self.block_size):
            previous = hash((previous, tuple(token_ids[start:start + self.block_size])))
            chain.append(previous)
        return chain

    def cached_tokens(self, hashes: Sequence[int], instance: int) -> int:
        """Tokens at the start of the prompt that ``instance`` was sent before."""
        blocks = 0
        for prefix in hashes:
            if instance not in self._instances.get(prefix, ()):
                break
            blocks += 1
        return blocks * self.block_size

    def add(self, hashes: Sequence[int], instance: int) -> None:
        for prefix in hashes:
            self._instances.setdefault(prefix, set()).add(instance)
            self._instances.move_to_end(prefix)
        while len(self._instances) > self.max_blocks:
            self._instances.popitem(last=False)

    def clear(self) -> None:
        self._instances.clear()


class Router:
    def __init__(self, roles: Sequence[str], block_size: int = 16, max_sessions: int = MAX_SESSIONS) -> None:
        self.roles = list(roles)
        self.max_sessions = max_sessions
        self.prefixes = PrefixIndex(block_size)
        self._sessions: OrderedDict[str, dict[str, int]] = OrderedDict()

    def pick(self, role: str, requests: Iterable[RoutedRequest], loads: Sequence[Load],
             session: str | None = None, unavailable: Collection[int] = (),
             prompt: Sequence[int] | None = None) -> int:
        """The instance in ``role`` for a new request, other than the ``unavailable`` ones (lost, or
        with no working link to the request's other instance); remembered for ``session``, and its
        ``prompt`` (token ids) for the prefix index."""
        remembered = self._sessions.get(session, {}) if session else {}
        instance = remembered.get(role)
        hashes = self.prefixes.hashes(prompt) if prompt is not None else []
        if instance is None or instance in unavailable:
            candidates = [w for w, own in enumerate(self.roles) if own == role and w not in unavailable]
            if not candidates:
                raise InstanceLostError(f"no {role} instance is serving")
            tokens = token_loads(requests, len(self.roles))
            instance = min(candidates, key=lambda w: (tokens[w] - self.prefixes.cached_tokens(hashes, w),
                                                    loads[w].kv_blocks_used))
        self.prefixes.add(hashes, instance)
        if session:
            self._sessions.setdefault(session, {})[role] = instance
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return instance


def token_loads(requests: Iterable[RoutedRequest], num_instances: int) -> list[int]:
    """Per instance: the prompt tokens it has still to compute plus the tokens its generating requests hold."""
    tokens = [0] * num_instances
    for request in requests:
        if request.instance < 0:  # not routed yet
            continue
        held = request.prompt_len + len(request.generated)
        if request.next_instance is not None and request.next_instance != request.instance:
            tokens[request.instance] += request.prompt_len  # computing its prompt
            tokens[request.next_instance] += request.prompt_len  # its KV is coming
        else:
            tokens[request.instance] += held
    return tokens

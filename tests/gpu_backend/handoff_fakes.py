"""Stand-ins for the disaggregated roles' tests: a fake transport (a rank's part that records every
call and lets the test say when a request's KV arrived), a runner that calls a part as the driver's
does (every rank at once, through the allow-list), and the engine state the roles read."""

from __future__ import annotations

from types import SimpleNamespace

from gpu_backend.cluster.roles import call_part

BLOCK_SIZE = 4


class FakeTransport:
    """``disagg.handoff.HandoffRank`` without a world: what the driver asked of every rank, in order."""

    name = "kv"
    remote_methods = frozenset({"send", "receive", "land", "drop"})

    def __init__(self, instance: int) -> None:
        self.instance = instance
        self.calls: list[tuple] = []
        self.receiving: set[str] = set()
        self.arrivals: dict[str, tuple[bool, str | None]] = {}  # this rank's share, set by the test
        self.everywhere: dict[str, bool] = {}  # whether every rank's share arrived, when it differs
        self.reaped = 0

    def send(self, request_id: str, dst_instance: int, block_ids: list[int]) -> None:
        self.calls.append(("send", request_id, dst_instance, list(block_ids)))

    def receive(self, request_id: str, src_instance: int, block_ids: list[int]) -> None:
        self.calls.append(("receive", request_id, src_instance, list(block_ids)))
        self.receiving.add(request_id)

    def land(self, request_id: str) -> bool:
        self.calls.append(("land", request_id))
        self.receiving.discard(request_id)
        return self.everywhere.get(request_id, self.arrivals[request_id][0])

    def drop(self, request_id: str) -> None:
        self.calls.append(("drop", request_id))
        self.receiving.discard(request_id)

    def arrived(self, request_id: str) -> tuple[bool, str | None] | None:
        return self.arrivals.get(request_id)

    def is_receiving(self, request_id: str) -> bool:
        return request_id in self.receiving

    def reap(self) -> None:
        self.reaped += 1


class EverywhereRunner:
    """A driver's runner as the roles see it: a call goes to every rank (noted) and runs here."""

    def __init__(self) -> None:
        self.to_followers: list[tuple[str, str, tuple]] = []

    def call_everywhere(self, part: FakeTransport, method: str, *args: object) -> object:
        self.to_followers.append((part.name, method, args))
        return call_part(part, method, args)


def sequence(num_prompt_tokens: int, block_table: list[int], num_computed_tokens: int = 0,
             finish_reason: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(num_prompt_tokens=num_prompt_tokens, block_table=block_table,
                           num_computed_tokens=num_computed_tokens, finish_reason=finish_reason)


class Messages(list):
    """What a role sent to the service."""

    def send(self, message: object) -> None:
        self.append(message)

"""Where a kind of instance plugs into the cluster: parts on every rank, roles in the driver.

The cluster runs TP×PP instances that compute prompts and generate, and knows nothing else. A kind
of instance that does more (``disagg``'s prefill and decode instances, which move KV between them)
hands the world a ``RankRoles``: a picklable callable that every rank calls once it has joined,
collectively and in rank order, and that gives the rank's ``RankPart``. The driver calls a
part's ``remote_methods`` on every rank of its instance at once (``DriverRunner.call_everywhere``:
a ``FollowerCall`` to the followers, the same call on its own part), and runs the part's
``DriverRole``s: they take the messages of their protocol from the service and work after each
step of the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch.distributed as dist

    from ..config import ModelConfig, InstanceSpec
    from ..engine.core import EngineCore
    from ..engine.outputs import EngineOutput
    from ..parallel.groups import InstanceLayout
    from .stage_runner import StageRunner


@dataclass(frozen=True)
class RankWorld:
    """What a rank knows of its world when its parts are made."""

    rank: int
    instances: list[InstanceLayout]  # every instance of the world, in rank order
    specs: list[InstanceSpec]  # their roles and shapes
    mine: int  # this rank's instance
    model_config: ModelConfig
    timeout: timedelta  # every collective's bound
    control_group: dist.ProcessGroup  # this rank's instance's ranks


class DriverRole(Protocol):
    """A part of the driver's job that a kind of instance adds."""

    @property
    def waiting(self) -> bool:
        """Something arrives outside the engine's steps (a KV transfer): the driver turns often."""
        ...

    def handle(self, message: object) -> bool:
        """Act on ``message`` if it is one of the role's protocol; whether it was."""
        ...

    def after_step(self) -> list[EngineOutput]:
        """The role's work after each step; outputs of the requests it put into the running batch."""
        ...

    def abort(self, request_id: str) -> None:
        """The request is aborted: let go of what the role holds for it."""
        ...


class RankPart(Protocol):
    """What a kind of instance adds to each of its ranks."""

    name: str  # what a ``FollowerCall`` names it by
    remote_methods: frozenset[str]  # what the driver may call on every rank

    def after_message(self) -> None:
        """A follower's turn after each message from its driver."""
        ...

    def driver_roles(self, engine: EngineCore, send: Callable[[object], None]) -> list[DriverRole]:
        """The roles of this instance's driver; ``send``: to the service."""
        ...


RankRoles = Callable[["RankWorld", "StageRunner"], RankPart]


def call_part(part: RankPart, method: str, args: tuple[Any, ...]) -> Any:
    """``part.method(*args)``, if the part lets its driver call that method on its ranks."""
    if method not in part.remote_methods:
        raise ValueError(f"{method!r} is not a remote method of the rank's part {part.name!r}")
    return getattr(part, method)(*args)

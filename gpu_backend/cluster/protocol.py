"""The messages between a sharded instance's processes: the service and each driver, the driver and
its followers. Frozen dataclasses, matched on their class; a kind of instance adds its own (the
disaggregated roles' are in ``disagg.protocol``) and they travel the same pipes.

Service -> driver (the instance's pipe): ``AddRequest``, ``AbortRequest``, ``Stop``.
Driver -> service: ``Ready`` once, then ``Accepted`` / ``Rejected`` per request, ``StepDone``
after each step (and at least once a heartbeat while idle), ``Failed`` when the instance breaks.
Driver -> followers (the instance's control group): ``RunStep`` per step, then ``StepMask`` when
the step samples a constrained row, ``FollowerCall`` for the rest (a method of one of the rank's
parts, by name), ``StopFollowing`` at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from ..engine.outputs import EngineOutput
    from ..engine.sampling_params import SamplingParams
    from ..engine.step_inputs import StepInputs


@dataclass(frozen=True)
class InstanceInfo:
    max_model_len: int
    max_num_seqs: int
    num_kv_blocks: int


@dataclass(frozen=True)
class InstanceLoad:
    num_running: int
    num_waiting: int
    kv_blocks_free: int
    kv_blocks_used: int
    num_preemptions: int


NO_LOAD = InstanceLoad(0, 0, 0, 0, 0)

# -- service -> driver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams | None
    num_resumed_tokens: int = 0  # the prompt ends with tokens generated before (EngineCore.add_request)


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class Stop:
    pass


# -- driver -> service ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    info: InstanceInfo


@dataclass(frozen=True)
class Accepted:
    request_id: str


@dataclass(frozen=True)
class Rejected:
    request_id: str
    error: Exception  # invalid input: the service turns it into the HTTP error


@dataclass(frozen=True)
class StepDone:
    """What one turn of the driver added to each request (the engine's outputs, token ids without
    text, passed on as they are), and the instance's load after it."""

    outputs: list[EngineOutput]
    load: InstanceLoad


@dataclass(frozen=True)
class Failed:
    """The instance broke (a rank's error, a collective that timed out): it is lost."""

    text: str


# -- driver -> followers -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStep:
    inputs: StepInputs
    released: list[int]  # sequences whose per-sequence state the ranks drop first


@dataclass(frozen=True)
class StepMask:
    """The grammar bitmask of the last ``RunStep``'s sampled rows (host int32 ``[rows, words]``;
    None when none of them is constrained any more). Sent after ``RunStep``, once the driver made
    it while the step's forward pass ran; the last stage's ranks wait for it before sampling."""

    bitmask: torch.Tensor | None


@dataclass(frozen=True)
class FollowerCall:
    """Call ``method`` of the rank's part ``target`` with ``args`` on every follower (the driver
    calls its own); only the methods the part lists in ``remote_methods`` may be called."""

    target: str
    method: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class StopFollowing:
    pass

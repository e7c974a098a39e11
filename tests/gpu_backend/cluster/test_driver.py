"""gpu_backend.cluster.driver: a driver's turns over an in-memory pipe, with a fake engine and no
other process: requests accepted or refused, each step's outputs reported with the load, aborts,
the heartbeat of an idle driver, a failure said before it is raised, and roles plugged in."""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from types import SimpleNamespace

import pytest

from gpu_backend.cluster import driver as driver_module
from gpu_backend.cluster.driver import Driver, DriverPipe
from gpu_backend.cluster.protocol import (AbortRequest, Accepted, AddRequest, Failed, Ready, Rejected, StepDone,
                                          Stop, InstanceInfo)
from gpu_backend.engine.outputs import EngineOutput
from gpu_backend.engine.sampling_params import SamplingParams
from gpu_backend.errors import InvalidRequestError

WAIT_S = 5.0  # generous: the pipe is in this process


def engine_output(request_id: str, prompt: list[int], token_ids: list[int], new: int,
                  finish_reason: str | None) -> EngineOutput:
    """The engine's output of one step (what the driver passes on to the service)."""
    return EngineOutput(request_id, tuple(token_ids[-new:]) if new else (), len(prompt), len(token_ids),
                        finish_reason=finish_reason)


class FakeEngine:
    """What a driver uses of ``EngineCore``: each request gains token 100 + n at its n-th step."""

    max_model_len = 64
    config = SimpleNamespace(max_num_seqs=4)

    def __init__(self) -> None:
        self.requests: dict[str, tuple[list[int], int, list[int]]] = {}  # id -> prompt, max_tokens, tokens
        self.block_manager = SimpleNamespace(num_blocks=8, num_free_blocks=8, num_used_blocks=0, block_size=4)
        self.scheduler = SimpleNamespace(num_running=0, num_waiting=0, num_preemptions=0)
        self.fail_step = False

    def add_request(self, prompt: list[int], params: SamplingParams | None, request_id: str,
                    num_resumed_tokens: int = 0) -> None:
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        self.requests[request_id] = (prompt, (params or SamplingParams()).max_tokens or 16, [])
        self.scheduler.num_running = len(self.requests)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[EngineOutput]:
        if self.fail_step:
            raise RuntimeError("a collective timed out")
        outputs = []
        for request_id, (prompt, max_tokens, tokens) in list(self.requests.items()):
            tokens.append(100 + len(tokens))
            done = len(tokens) == max_tokens
            outputs.append(engine_output(request_id, prompt, tokens, 1, "length" if done else None))
            if done:
                del self.requests[request_id]
        self.scheduler.num_running = len(self.requests)
        return outputs

    def abort(self, request_id: str) -> EngineOutput | None:
        request = self.requests.pop(request_id, None)
        return None if request is None else engine_output(request_id, request[0], request[2], 0, "abort")


@dataclass(frozen=True)
class Ping:
    """A message of a role's own protocol."""

    request_id: str


class EchoRole:
    """A role that answers ``Ping`` and puts one output of its own into the next step."""

    def __init__(self, send) -> None:
        self.send, self.pending, self.aborted = send, [], []
        self.waiting = False

    def handle(self, message: object) -> bool:
        match message:
            case Ping(request_id):
                self.pending.append(request_id)
                return True
        return False

    def after_step(self) -> list[EngineOutput]:
        outputs = [engine_output(request_id, [1], [7], 1, "length") for request_id in self.pending]
        self.pending = []
        return outputs

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


def make_driver(roles=None) -> tuple[Driver, FakeEngine, Connection, list[str]]:
    service, driver_end = Pipe()
    engine, stopped = FakeEngine(), []
    runner = SimpleNamespace(place=SimpleNamespace(rank=0), stop=lambda: stopped.append("stop"))
    pipe = DriverPipe(driver_end)
    driver = Driver(engine, runner, pipe, roles(pipe.send) if roles else [])
    return driver, engine, service, stopped


def received(service: Connection) -> list[object]:
    messages = []
    while service.poll(0):
        messages.append(service.recv())
    return messages


def outputs_of(messages: list[object]) -> list:
    return [output for message in messages if isinstance(message, StepDone) for output in message.outputs]


def test_a_request_is_accepted_and_its_tokens_come_back_step_by_step_with_the_load() -> None:
    driver, _, service, _ = make_driver()
    service.send(AddRequest("r1", [1, 2, 3], SamplingParams(max_tokens=3)))
    messages = []
    for _ in range(4):
        driver.serve_once()
        messages += received(service)
    assert messages[0] == Accepted("r1")
    steps = [m for m in messages if isinstance(m, StepDone)]
    assert [o.new_token_ids for o in outputs_of(messages)] == [(100,), (101,), (102,)]
    assert [o.finish_reason for o in outputs_of(messages)] == [None, None, "length"]
    assert outputs_of(messages)[-1].num_completion_tokens == 3 and outputs_of(messages)[-1].num_prompt_tokens == 3
    assert [step.load.num_running for step in steps] == [1, 1, 0]
    assert steps[0].load.kv_blocks_free == 8


def test_invalid_input_is_refused_with_its_error_and_the_driver_serves_on() -> None:
    driver, _, service, _ = make_driver()
    service.send(AddRequest("bad", [], None))
    service.send(AddRequest("good", [5], SamplingParams(max_tokens=1)))
    driver.serve_once()
    messages = received(service)
    refused = messages[0]
    assert isinstance(refused, Rejected) and refused.request_id == "bad"
    assert isinstance(refused.error, InvalidRequestError) and "empty" in str(refused.error)
    assert messages[1] == Accepted("good")
    assert [(o.request_id, o.finish_reason) for o in outputs_of(messages)] == [("good", "length")]


def test_an_abort_ends_the_request_at_once_and_says_so() -> None:
    driver, engine, service, _ = make_driver()
    service.send(AddRequest("r1", [1], SamplingParams(max_tokens=50)))
    driver.serve_once()
    service.send(AbortRequest("r1"))
    service.send(AbortRequest("never-seen"))  # nothing to say about it
    driver.serve_once()
    aborted = [o for o in outputs_of(received(service)) if o.finish_reason == "abort"]
    assert [(o.request_id, o.finished) for o in aborted] == [("r1", True)]
    assert not engine.requests


def test_an_idle_driver_speaks_once_a_heartbeat_and_not_more(monkeypatch: pytest.MonkeyPatch) -> None:
    driver, _, service, _ = make_driver()
    driver.serve_once()  # never spoke yet: a heartbeat is due
    first = received(service)
    assert len(first) == 1 and isinstance(first[0], StepDone) and first[0].outputs == []
    monkeypatch.setattr(driver_module, "HEARTBEAT_S", 3600.0)
    driver.serve_once()
    assert received(service) == []
    monkeypatch.setattr(driver_module, "HEARTBEAT_S", 0.0)
    driver.serve_once()
    assert [type(m) for m in received(service)] == [StepDone]


def test_serve_says_ready_first_and_tells_the_followers_to_stop_at_the_end() -> None:
    driver, _, service, stopped = make_driver()
    service.send(Stop())
    driver.serve()
    messages = received(service)
    assert messages[0] == Ready(InstanceInfo(max_model_len=64, max_num_seqs=4, num_kv_blocks=8))
    assert stopped == ["stop"]


def test_a_service_that_went_away_stops_the_driver() -> None:
    driver, _, service, stopped = make_driver()
    service.close()
    driver.pipe.send = lambda message: None  # nobody reads
    driver.serve()
    assert stopped == ["stop"]


def test_a_failure_is_said_to_the_service_before_it_is_raised() -> None:
    driver, engine, service, stopped = make_driver()
    service.send(AddRequest("r1", [1], SamplingParams(max_tokens=5)))
    engine.fail_step = True
    with pytest.raises(RuntimeError, match="timed out"):
        driver.serve()
    failed = received(service)[-1]
    assert isinstance(failed, Failed) and failed.text == "rank 0: RuntimeError: a collective timed out"
    assert stopped == []  # the other ranks may be stuck on the one that failed


def test_roles_take_their_own_messages_add_their_outputs_and_hear_of_aborts() -> None:
    driver, _, service, _ = make_driver(lambda send: [EchoRole(send)])
    role = driver.roles[0]
    service.send(Ping("p1"))
    service.send(AbortRequest("p0"))
    driver.serve_once()
    assert [(o.request_id, o.new_token_ids) for o in outputs_of(received(service))] == [("p1", (7,))]
    assert role.aborted == ["p0"]


def test_a_message_no_role_takes_breaks_the_driver_loudly() -> None:
    driver, _, service, _ = make_driver()
    service.send(Ping("p1"))  # no role of this driver speaks that protocol
    with pytest.raises(TypeError, match="no role of this driver takes Ping"):
        driver.serve()
    assert isinstance(received(service)[-1], Failed)

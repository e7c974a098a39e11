"""gpu_backend.cluster.stage_runner: a follower's loop over its driver's typed messages (steps, calls
of a rank's part by name through the one generic ``FollowerCall``, stop), without a model or a world."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gpu_backend.cluster.protocol import FollowerCall, RunStep, StepMask, StopFollowing
from gpu_backend.cluster.roles import call_part
from gpu_backend.cluster.stage_runner import StageRunner


class Part:
    """A rank's part: only ``note`` may be called from the driver."""

    name = "notes"
    remote_methods = frozenset({"note"})

    def __init__(self) -> None:
        self.notes: list[tuple] = []
        self.turns = 0

    def note(self, *args: object) -> str:
        self.notes.append(args)
        return "noted"

    def forget_everything(self) -> None:
        self.notes.clear()

    def after_message(self) -> None:
        self.turns += 1


class Control:
    def __init__(self, messages: list[object]) -> None:
        self.messages = list(messages)

    def receive(self) -> object:
        return self.messages.pop(0)


def step(name: str, constrained: bool = False) -> SimpleNamespace:
    """Step inputs as far as ``follow`` reads them: whether a sampled row is under a grammar."""
    return SimpleNamespace(name=name, sampling=SimpleNamespace(constrained_rows=[0] if constrained else []))


def follower(samples: bool = True) -> StageRunner:
    """A StageRunner without a model: only what ``follow`` touches. ``samples``: a last stage's rank,
    which asks for the step's mask between its forward pass and its sampler."""
    runner = StageRunner.__new__(StageRunner)
    runner.place = SimpleNamespace(rank=1)
    runner.ran, runner.released, runner.waited, runner.masks = [], [], [], []

    def run(inputs: SimpleNamespace, previous: str | None, masks=None) -> str:
        runner.ran.append((inputs.name, previous))
        if masks is not None and samples:
            runner.masks.append(masks(inputs.sampling))
        return f"launched {inputs.name}"

    runner.run = run
    runner.release = runner.released.append
    runner.sends = SimpleNamespace(wait=lambda: runner.waited.append(True))
    return runner


def test_a_follower_runs_each_step_after_the_released_sequences_and_calls_parts_by_name() -> None:
    runner, part = follower(), Part()
    runner.follow(Control([RunStep(step("step 1"), [4, 5]), FollowerCall("notes", "note", ("r1", 3)),
                           RunStep(step("step 2"), []), StopFollowing()]), {"notes": part})
    assert runner.released == [4, 5]
    assert runner.ran == [("step 1", None), ("step 2", "launched step 1")]  # each step knows the one before
    assert part.notes == [("r1", 3)]
    assert part.turns == 3  # after each message but the stop
    assert runner.waited == [True]  # its sends are done before it leaves


@pytest.mark.parametrize("samples", [True, False], ids=["last-stage", "earlier-stage"])
def test_a_constrained_step_is_followed_by_its_mask(samples: bool) -> None:
    """The last stage's ranks take the StepMask inside the step (before sampling); the others skip it."""
    runner = follower(samples)
    messages = [RunStep(step("free"), []), RunStep(step("json", constrained=True), []), StepMask("mask of json"),
                RunStep(step("after"), []), StopFollowing()]
    runner.follow(Control(messages), {})
    assert runner.ran == [("free", None), ("json", "launched free"), ("after", "launched json")]
    assert runner.masks == (["mask of json"] if samples else [])


def test_a_sampling_rank_wants_the_mask_right_after_its_step() -> None:
    with pytest.raises(TypeError, match="expected the step's StepMask from the driver, got StopFollowing"):
        follower().follow(Control([RunStep(step("json", constrained=True), []), StopFollowing()]), {})


def test_only_the_methods_a_part_lists_can_be_called_from_the_driver() -> None:
    part = Part()
    assert call_part(part, "note", ("x",)) == "noted"
    with pytest.raises(ValueError, match="'forget_everything' is not a remote method of the rank's part 'notes'"):
        call_part(part, "forget_everything", ())
    with pytest.raises(ValueError):
        follower().follow(Control([FollowerCall("notes", "__init__", ())]), {"notes": part})
    assert part.notes == [("x",)]


def test_a_message_a_follower_does_not_know_breaks_it_loudly() -> None:
    with pytest.raises(TypeError, match="rank 1: no follower takes tuple"):
        follower().follow(Control([("step", "inputs", [])]), {})

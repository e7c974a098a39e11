"""Counters of the step loop: how many steps and tokens, and where the host's time went.

The loop runs one batch ahead (see ``LLMEngine.step``): ``launch_s`` is the host's time to queue
a batch, ``wait_s`` its time blocked on reading the previous batch's tokens back. On a GPU the
device idles between steps only when the host's other phases outlast a step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class StepStats:
    steps: int = 0
    decode_only_steps: int = 0
    scheduled_tokens: int = 0
    schedule_s: float = 0.0
    prepare_s: float = 0.0
    launch_s: float = 0.0  # includes prepare_s
    wait_s: float = 0.0
    postprocess_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        values = asdict(self)
        values["mean_tokens_per_step"] = self.scheduled_tokens / self.steps if self.steps else 0.0
        return values

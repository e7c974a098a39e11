"""Counters of the step loop: how many steps and tokens, and where the host's time went.

``execute_s`` includes waiting for the device (sampling reads the tokens back), so on a GPU the
other phases are the time the device may sit idle between steps.
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
    execute_s: float = 0.0
    decode_only_execute_s: float = 0.0
    postprocess_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        values = asdict(self)
        values["mean_tokens_per_step"] = self.scheduled_tokens / self.steps if self.steps else 0.0
        return values

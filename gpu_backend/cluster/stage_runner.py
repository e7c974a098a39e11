"""The model runner of one rank of a TP×PP instance.

Every rank runs the same ``StepInputs``. A pipeline stage after the first starts from the hidden
state and residual the previous stage sends; a stage before the last sends its own on and
samples nothing. The last stage samples (each of its TP ranks draws the same token: same logits,
same seeds); with more than one stage its first TP rank sends the tokens to the driver, which
posted the receive when it launched the step, so tokens cost no extra round trip per step.

The driver (rank 0: first stage, first TP rank) also plans each step and sends it to the others.
A step with constrained rows (structured output) is followed by its grammar bitmask, which the
driver's engine makes while the step's forward pass runs; every rank of the last stage samples
with the same mask, so they all draw the same token.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from ..config import EngineConfig, ModelConfig
from ..engine.model_runner import LaunchedStep, ModelRunner, TokenMasks
from ..engine.sampling_batch import SamplingPlan
from ..engine.scheduler import ScheduledBatch
from ..engine.sequence import Sequence
from ..engine.step_inputs import StepInputs
from ..layers.attention import AttentionMetadata
from ..layers.sampler import SamplerOutput
from ..parallel import comm
from ..parallel.groups import RankGroups
from ..parallel.pipeline import PipelineStage
from .protocol import FollowerCall, RunStep, StepMask, StopFollowing
from .roles import RankPart, call_part

log = logging.getLogger(__name__)


class StageRunner(ModelRunner):
    def __init__(self, config: EngineConfig, model_config: ModelConfig, place: RankGroups, stage: PipelineStage,
                 *, token_group: dist.ProcessGroup | None = None, progress: bool = False) -> None:
        """``token_group``: the driver and the last stage's first rank, when there are several stages."""
        self.place = place
        self.token_group = token_group
        self.sends = comm.PendingSends()
        super().__init__(config, model_config, progress=progress, stage=stage)
        self.pipeline_depth = place.instance.pp_size

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
                ) -> torch.Tensor | None:
        stage = self.model.stage
        if stage.is_first and stage.is_last:
            return super().forward(input_ids, positions, meta)
        intermediate = None
        if not stage.is_first:
            intermediate = comm.receive_intermediate(input_ids.shape[0], self.model_config.hidden_size, self.dtype,
                                                    self.device, self.place.prev_stage_rank)
        out = self.model(input_ids, positions, meta, intermediate)
        if stage.is_last:
            return out
        comm.send_intermediate(self.sends, out, self.place.next_stage_rank)
        return None

    def after_sampling(self, result: SamplerOutput) -> None:
        if self.place.instance.pp_size > 1 and self.place.tp_rank == 0:
            tensors = [result.token_ids, result.logprobs, result.top_logprobs, result.top_token_ids]
            comm.send_tokens(self.sends, tensors, self.place.instance.first_rank, self.token_group)

    def follow(self, control: comm.ControlPlane, parts: Mapping[str, RankPart]) -> None:
        """A follower's loop: run each step the driver sends, and each call of a rank's part
        (``roles``), until it says stop."""
        previous: LaunchedStep | None = None
        while True:
            match control.receive():
                case RunStep(inputs, released):
                    for seq_id in released:
                        self.release(seq_id)
                    masks = (lambda _plan: _receive_mask(control)) if _is_constrained(inputs) else None
                    previous = self.run(inputs, previous, masks)
                case StepMask():
                    pass  # a stage before the last samples nothing
                case FollowerCall(target, method, args):
                    call_part(parts[target], method, args)
                case StopFollowing():
                    self.sends.wait()
                    return
                case message:
                    raise TypeError(f"rank {self.place.rank}: no follower takes {type(message).__name__}")
            for part in parts.values():
                part.after_message()


class DriverRunner(StageRunner):
    """Rank 0's runner: plans each step, sends it to every other rank, then runs its own part."""

    holds_sampler = False  # the step's mask goes to the other ranks from inside launch

    def __init__(self, config: EngineConfig, model_config: ModelConfig, place: RankGroups, stage: PipelineStage,
                 control: comm.ControlPlane, *, token_group: dist.ProcessGroup | None = None,
                 progress: bool = False) -> None:
        super().__init__(config, model_config, place, stage, token_group=token_group, progress=progress)
        self.control = control
        self._released: list[int] = []
        self._seeds: dict[int, int] = {}
        instance = place.instance
        self._last_stage_rank = instance.rank_of(instance.pp_size - 1, 0)

    def seed_for(self, seq: Sequence) -> int:
        """Unseeded random rows get a seed here, so every sampling rank draws the same token."""
        seed = self._seeds.get(seq.seq_id)
        if seed is None:
            seed = self._seeds[seq.seq_id] = random.getrandbits(63)
        return seed

    def launch(self, batch: ScheduledBatch, previous: LaunchedStep | None = None,
               masks: TokenMasks | None = None) -> LaunchedStep:
        """``masks``: as ``ModelRunner.run``'s; the mask it makes goes to every other rank too."""
        inputs = self.plan(batch, previous)
        self.control.send(RunStep(inputs, self._released))
        self._released = []
        send_masks = None
        if _is_constrained(inputs):
            def send_masks(plan: SamplingPlan) -> torch.Tensor | None:
                bitmask = masks(plan) if masks is not None else None
                self.control.send(StepMask(bitmask))
                return bitmask
        step = self.run(inputs, previous, send_masks)
        if send_masks is not None and not self.model.stage.is_last:  # the driver's stage samples nothing
            assert inputs.sampling is not None
            send_masks(inputs.sampling)
        if self.pipeline_depth > 1 and inputs.sampling is not None:
            receive = comm.receive_tokens(len(inputs.sample_rows), _num_logprobs(inputs), self.device,
                                          self._last_stage_rank, self.token_group)
            step.receive = lambda: SamplerOutput(*receive())
        return step

    def release(self, seq_id: int) -> None:
        super().release(seq_id)
        self._seeds.pop(seq_id, None)
        self._released.append(seq_id)

    def call_everywhere(self, part: RankPart, method: str, *args: Any) -> Any:
        """``part.method(*args)`` on every rank of the instance: sent to the followers (not waited
        for), then run on this rank; what this rank's call returned."""
        self.control.send(FollowerCall(part.name, method, args))
        return call_part(part, method, args)

    def stop(self) -> None:
        """Tell every other rank to leave its loop."""
        self.control.send(StopFollowing())
        self.control.wait_sent()
        self.sends.wait()


def _is_constrained(inputs: StepInputs) -> bool:
    """Whether the step samples a row under a grammar (then a ``StepMask`` follows its ``RunStep``)."""
    return inputs.sampling is not None and bool(inputs.sampling.constrained_rows)


def _receive_mask(control: comm.ControlPlane) -> torch.Tensor | None:
    message = control.receive()
    if not isinstance(message, StepMask):
        raise TypeError(f"expected the step's StepMask from the driver, got {type(message).__name__}")
    return message.bitmask


def _num_logprobs(inputs: StepInputs) -> int | None:
    assert inputs.sampling is not None
    wanted = [row.params.logprobs for row in inputs.sampling.rows if row.params.logprobs is not None]
    return max(wanted) if wanted else None

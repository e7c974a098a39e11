"""Which contiguous range of decoder layers each pipeline stage holds.

A stage runs layers ``start_layer .. end_layer - 1``; the first stage also embeds the tokens and
the last one also runs the final norm, the LM head and the sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineStage:
    start_layer: int
    end_layer: int  # exclusive
    is_first: bool
    is_last: bool

    def __post_init__(self) -> None:
        if not 0 <= self.start_layer < self.end_layer:
            raise ValueError(f"a pipeline stage needs 0 <= start_layer < end_layer, got {self}")
        if self.is_first != (self.start_layer == 0):
            raise ValueError(f"exactly the stage that starts at layer 0 is the first stage, got {self}")

    @classmethod
    def whole(cls, num_layers: int) -> PipelineStage:
        """The single stage of an unpipelined model."""
        return cls(0, num_layers, is_first=True, is_last=True)

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer

    @property
    def layers(self) -> range:
        return range(self.start_layer, self.end_layer)

    def check_fits(self, num_layers: int) -> None:
        """Raise unless this stage lies within a model of ``num_layers`` layers, and is last iff it ends it."""
        if self.end_layer > num_layers or self.is_last != (self.end_layer == num_layers):
            raise ValueError(f"{self} does not fit a model of {num_layers} layers: the last stage must end at "
                             f"layer {num_layers} and no stage may go past it")


def split_layers(num_layers: int, pp_size: int, explicit: Sequence[int] | None = None) -> list[range]:
    """Contiguous layer ranges, one per stage: ``explicit`` layer counts (``--pp-layers 5,3``) or even ones."""
    if pp_size < 1:
        raise ValueError(f"the pipeline needs at least one stage, got pp_size {pp_size}")
    counts = list(explicit) if explicit is not None else _even_counts(num_layers, pp_size)
    _check_counts(counts, num_layers, pp_size)
    ranges, start = [], 0
    for count in counts:
        ranges.append(range(start, start + count))
        start += count
    return ranges


def _even_counts(num_layers: int, pp_size: int) -> list[int]:
    if pp_size > num_layers:
        raise ValueError(f"cannot split {num_layers} layers over {pp_size} pipeline stages: every stage needs at "
                         f"least one layer; use at most {num_layers} stages")
    # The last stage also runs the final norm, the LM head and the sampler, so the layers left
    # over go to the earliest stages: 5 over 3 is [2, 2, 1].
    base, extra = divmod(num_layers, pp_size)
    return [base + (1 if stage < extra else 0) for stage in range(pp_size)]


def _check_counts(counts: list[int], num_layers: int, pp_size: int) -> None:
    given = ",".join(map(str, counts))
    if len(counts) != pp_size:
        raise ValueError(f"layer counts {given} name {len(counts)} stages but the pipeline has {pp_size}; "
                         f"give one count per stage")
    if any(count < 1 for count in counts):
        raise ValueError(f"layer counts {given} must all be positive: every stage needs at least one layer")
    if sum(counts) != num_layers:
        raise ValueError(f"layer counts {given} sum to {sum(counts)} but the model has {num_layers} layers; "
                         f"give counts that sum to {num_layers}")


def stage_of(pp_rank: int, pp_size: int, num_layers: int, explicit: Sequence[int] | None = None) -> PipelineStage:
    """The layers and role of pipeline rank ``pp_rank`` out of ``pp_size``."""
    if not 0 <= pp_rank < pp_size:
        raise ValueError(f"pp_rank must be in 0..{pp_size - 1}, got {pp_rank}")
    layers = split_layers(num_layers, pp_size, explicit)[pp_rank]
    return PipelineStage(layers.start, layers.stop, is_first=pp_rank == 0, is_last=pp_rank == pp_size - 1)

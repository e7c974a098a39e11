"""CUDA graphs of the decode forward, one per batch size bucket, replayed on static input buffers.

A decode step launches hundreds of small kernels; replaying a captured graph removes their
launch cost, which at batch 1 is most of the step. Batches are padded up to the next captured
size: padding rows write to slot -1 (skipped) and attend over zero tokens.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import torch

from ..layers.attention import AttentionMetadata

if TYPE_CHECKING:
    from .model_runner import ModelRunner


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 513, 32))
    return [size for size in sizes if size <= max_batch_size] or [1]


class DecodeGraphs:
    def __init__(self, runner: ModelRunner, max_batch_size: int) -> None:
        self.runner = runner
        self.sizes = graph_batch_sizes(max_batch_size)
        device, top = runner.device, self.sizes[-1]
        self.input_ids = torch.zeros(top, dtype=torch.long, device=device)
        self.positions = torch.zeros(top, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((top,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.zeros(top, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((top, runner.max_blocks_per_seq), dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(top + 1, dtype=torch.int32, device=device)
        hidden_shape = (top, runner.model_config.hidden_size)
        self.stage = runner.model.stage
        # a pipeline stage after the first starts from the previous one's (hidden, residual)
        self.intermediate_in = None if self.stage.is_first else (
            torch.zeros(hidden_shape, dtype=runner.dtype, device=device),
            torch.zeros(hidden_shape, dtype=runner.dtype, device=device))
        self.hidden = torch.zeros(hidden_shape, dtype=runner.dtype, device=device)
        self.residual = None if self.stage.is_last else torch.zeros(hidden_shape, dtype=runner.dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._capture_all()

    def fits(self, batch_size: int) -> bool:
        return batch_size <= self.sizes[-1]

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size],
            max_query_len=1, max_seq_len=self.runner.max_model_len, is_decode_only=True,
        )

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = None
        model = self.runner.model
        for size in reversed(self.sizes):  # largest first so smaller graphs reuse its memory pool
            meta = self._meta(size)
            for _ in range(2):  # warm up: Triton compiles and autotunes outside capture
                self._forward(model, size, meta)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(model, size, meta)
            pool = graph.pool() if pool is None else pool
            self.graphs[size] = graph
        torch.cuda.synchronize(self.runner.device)

    def _forward(self, model: torch.nn.Module, size: int, meta: AttentionMetadata) -> None:
        intermediate = None
        if self.intermediate_in is not None:
            intermediate = (self.intermediate_in[0][:size], self.intermediate_in[1][:size])
        out = model(self.input_ids[:size], self.positions[:size], meta, intermediate)
        if self.residual is None:
            self.hidden[:size] = out
        else:
            self.hidden[:size], self.residual[:size] = out

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
            intermediate: tuple[torch.Tensor, torch.Tensor] | None = None
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The model's output for the batch: the final hidden states, or a stage's (hidden, residual).

        The tensors returned are the graph's own buffers, overwritten by the next replay."""
        batch_size = input_ids.shape[0]
        size = self.sizes[bisect.bisect_left(self.sizes, batch_size)]
        if self.intermediate_in is not None:
            assert intermediate is not None, "a later pipeline stage starts from the previous one's output"
            self.intermediate_in[0][:batch_size] = intermediate[0]
            self.intermediate_in[1][:batch_size] = intermediate[1]
        self.input_ids[:batch_size] = input_ids
        self.positions[:batch_size] = positions
        self.slot_mapping[:batch_size] = meta.slot_mapping
        self.slot_mapping[batch_size:size] = -1
        self.seq_lens[:batch_size] = meta.seq_lens
        self.seq_lens[batch_size:size] = 0
        width = meta.block_tables.shape[1]
        self.block_tables[:batch_size, :width] = meta.block_tables
        self.graphs[size].replay()
        if self.residual is None:
            return self.hidden[:batch_size]
        return self.hidden[:batch_size], self.residual[:batch_size]

"""Vocabulary-parallel token embedding and LM head: each rank holds a contiguous slice of the vocab."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint_tensor import Loaded, narrow
from ..errors import CheckpointError
from ..kernels import Kernels
from ..parallel.comm import all_gather_last_dim, all_reduce
from ..parallel.state import tp_rank, tp_size


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.rows_per_rank = -(-vocab_size // tp_size())
        self.vocab_start = tp_rank() * self.rows_per_rank
        self.weight = nn.Parameter(torch.empty(self.rows_per_rank, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        if loaded.shape[0] != self.vocab_size or loaded.shape[1] != param.shape[1]:
            raise CheckpointError(
                f"embedding: checkpoint shape {tuple(loaded.shape)} does not fit vocab {self.vocab_size} x {param.shape[1]}"
            )
        rows = min(self.rows_per_rank, self.vocab_size - self.vocab_start)
        param.data[:rows].copy_(narrow(loaded, 0, self.vocab_start, rows))  # only this rank's rows are read
        param.data[rows:].zero_()  # padding rows of the last rank

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.rows_per_rank)
        embedded = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(embedded.masked_fill(outside.unsqueeze(-1), 0))


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for the rows that are sampled; with tied embeddings it shares the embedding's weight."""

    def __init__(self, vocab_size: int, hidden_size: int, ops: Kernels | None = None) -> None:
        super().__init__(vocab_size, hidden_size)
        self.matmul = ops.linear if ops is not None else F.linear

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = self.matmul(hidden, self.weight, None)
        return all_gather_last_dim(logits)[..., : self.vocab_size]

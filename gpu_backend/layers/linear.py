"""Linear layers that hold this rank's shard and know how to load it from a checkpoint tensor.

Column-parallel layers split the output dimension (no communication), row-parallel ones the
input dimension (one all-reduce after the matmul). Fused layers (QKV, gate+up) load each
checkpoint tensor into its own row range, named by the ``shard_id`` the loader passes. Loaders
``narrow`` the checkpoint tensor, so a rank reads only its slice from the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint_tensor import Loaded, materialize, narrow
from ..errors import CheckpointError
from ..kernels import Kernels, reference
from ..parallel.comm import all_reduce
from ..parallel.state import tp_rank, tp_size


def _divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise CheckpointError(f"{what} ({numerator}) is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


def _copy(param: nn.Parameter, loaded: Loaded, name: str) -> None:
    """Copy a narrowed slice, or a whole (replicated) tensor: its shape is checked before it is read."""
    if param.shape != loaded.shape:
        raise CheckpointError(f"{name}: checkpoint shape {tuple(loaded.shape)} does not fit {tuple(param.shape)}")
    param.data.copy_(materialize(loaded))


class LinearBase(nn.Module):
    """``y = x W^T (+ b)`` with an uninitialised weight: loading fills it, so building costs nothing.

    As it stands the layer is replicated: every rank holds and loads the whole weight; the
    parallel subclasses below load only their rank's slice.
    """

    def __init__(self, input_size: int, output_size: int, bias: bool, ops: Kernels | None = None) -> None:
        super().__init__()
        self.ops = ops
        self.matmul = ops.linear if ops is not None else F.linear  # the Triton one has a batch-1 GEMV
        self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        _copy(param, loaded, "replicated weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.weight, self.bias)

    def forward_normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(norm(x + residual)) and the new residual, in one kernel where the backend can.

        `norm` is an RMSNorm (weight, eps); without a residual the new residual is x itself.
        """
        fused = self.ops.rms_norm_linear if self.ops is not None else reference.rms_norm_linear
        return fused(x, residual, norm.weight, norm.eps, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output rows split across ranks; each rank returns its slice of the output."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, ops: Kernels | None = None) -> None:
        self.output_size_per_rank = _divide(output_size, tp_size(), "output size")
        super().__init__(input_size, self.output_size_per_rank, bias, ops)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        rows = self.output_size_per_rank
        _copy(param, narrow(loaded, 0, tp_rank() * rows, rows), "column-parallel weight")


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate and up projections); shard_id = index."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, ops: Kernels | None = None) -> None:
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, ops)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        index = int(shard_id)  # type: ignore[arg-type]
        rows = self.output_sizes[index] // tp_size()
        offset = sum(self.output_sizes[:index]) // tp_size()
        _copy(param.data.narrow(0, offset, rows), narrow(loaded, 0, tp_rank() * rows, rows), f"merged part {index}")


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused; KV heads are replicated when there are fewer than ranks."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 ops: Kernels | None = None) -> None:
        size = tp_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, size, "number of attention heads")
        self.num_kv_heads = max(1, num_kv_heads // size)
        if num_kv_heads >= size:
            _divide(num_kv_heads, size, "number of KV heads")
        elif size % num_kv_heads:
            raise CheckpointError(f"tensor-parallel size {size} is not a multiple of the {num_kv_heads} KV heads")
        self.kv_replicas = max(1, size // num_kv_heads)
        LinearBase.__init__(self, hidden_size, (self.num_heads + 2 * self.num_kv_heads) * head_dim, bias, ops)
        self.output_size_per_rank = (self.num_heads + 2 * self.num_kv_heads) * head_dim

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        if shard_id == "q":
            offset, rows, start = 0, self.q_size, tp_rank() * self.q_size
        elif shard_id in ("k", "v"):
            offset = self.q_size + (self.kv_size if shard_id == "v" else 0)
            rows, start = self.kv_size, (tp_rank() // self.kv_replicas) * self.kv_size
        else:
            raise CheckpointError(f"QKV shard id must be q, k or v, not {shard_id!r}")
        _copy(param.data.narrow(0, offset, rows), narrow(loaded, 0, start, rows), f"{shard_id}_proj")


class RowParallelLinear(LinearBase):
    """Input columns split across ranks; partial sums are all-reduced, the bias added once."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, ops: Kernels | None = None) -> None:
        self.input_size_per_rank = _divide(input_size, tp_size(), "input size")
        super().__init__(self.input_size_per_rank, output_size, bias, ops)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        if param.dim() == 1:  # bias: whole on every rank
            _copy(param, loaded, "row-parallel bias")
            return
        cols = self.input_size_per_rank
        _copy(param, narrow(loaded, 1, tp_rank() * cols, cols), "row-parallel weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if tp_rank() == 0 else None
        return all_reduce(self.matmul(x, self.weight, bias))

    def forward_gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        """forward(silu(gate) * up) for gate_up = [gate | up], in one kernel where the backend can."""
        fused = self.ops.silu_and_mul_linear if self.ops is not None else reference.silu_and_mul_linear
        bias = self.bias if tp_rank() == 0 else None
        return all_reduce(fused(gate_up, self.weight, bias))

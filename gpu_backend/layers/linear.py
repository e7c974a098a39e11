"""Linear layers that hold this rank's shard and know how to load it from a checkpoint tensor.

Column-parallel layers split the output dimension (no communication), row-parallel ones the
input dimension (one all-reduce after the matmul). Fused layers (QKV, gate+up) load each
checkpoint tensor into its own row range, named by the ``shard_id`` the loader passes. Loaders
``narrow`` the checkpoint tensor, so a rank reads only its slice from the file.

Loading an ECF-compressed checkpoint with ``keep_compressed()`` called first (the loader does, on
CUDA; ModelRunner builds the layers so, ``built_compressed``), a layer holds its weight coded instead (``self.compressed``, weights/packed.py): each source
tensor's parts cut to this rank's rows (column-parallel) or even column range (row-parallel), its
escape list re-based, the sources stacked with a table each (QKV, gate_up). The dense parameter
is then empty, and the matmuls decode the weight as they read it (kernels/triton_linear.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..checkpoint_tensor import Loaded, materialize, narrow
from ..errors import CheckpointError
from ..kernels import Kernels, reference
from ..parallel.comm import all_reduce
from ..parallel.state import tp_rank, tp_size
from ..weights.packed import CompressedWeight, coded_source


def _divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise CheckpointError(f"{what} ({numerator}) is not divisible by the tensor-parallel size {denominator}")
    return numerator // denominator


_built_compressed = False


@contextmanager
def built_compressed(enabled: bool = True) -> Iterator[None]:
    """Linear layers built inside hold their weights compressed from the start (``keep_compressed``):
    no dense weight is ever made, so loading a compressed checkpoint never holds the dense model."""
    global _built_compressed
    previous, _built_compressed = _built_compressed, enabled
    try:
        yield
    finally:
        _built_compressed = previous


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
        self.matmul = ops.linear if ops is not None else reference.linear  # the Triton one has a batch-1 GEMV
        self.compressed: CompressedWeight | None = None  # set instead of the dense weight by keep_compressed
        self._coded_sources: dict[int, CompressedWeight] | None = None  # while loading compressed: by first row
        if _built_compressed:  # no dense weight at all: loading keeps the coded parts (keep_compressed)
            self.weight = nn.Parameter(torch.empty(0), requires_grad=False)
            self._weight_shape, self._coded_sources = (output_size, input_size), {}
        else:
            self.weight = nn.Parameter(torch.empty(output_size, input_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(output_size), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        self._place(param, loaded, "replicated weight")

    @property
    def matmul_weight(self) -> torch.Tensor | CompressedWeight:
        """What the matmuls read: the compressed weight when the layer holds one, else the dense one."""
        return self.compressed if self.compressed is not None else self.weight

    @property
    def loading_compressed(self) -> bool:
        """Between keep_compressed (or a compressed build) and finish_loading: loads keep coded parts."""
        return self._coded_sources is not None

    @property
    def weight_shape(self) -> tuple[int, int]:
        """This rank's (rows, columns) of the weight, whether it is held dense or coded."""
        return self._weight_shape if self._coded_sources is not None else tuple(self.weight.shape)  # type: ignore[return-value]

    def keep_coded(self, first_row: int, coded: CompressedWeight) -> None:
        """Take the weight's rows from ``first_row`` on, coded (one source tensor's, coded elsewhere,
        e.g. on the device); finish_loading stacks them."""
        assert self._coded_sources is not None, "keep_coded needs keep_compressed or a compressed build first"
        self._coded_sources[first_row] = coded

    def keep_compressed(self) -> None:
        """Hold the weight coded from the next load on: the dense parameter is emptied now, and the
        weight loader keeps each source tensor (this rank's slice) coded until finish_loading."""
        if self._coded_sources is not None:
            return
        self._weight_shape = tuple(self.weight.shape)
        self._coded_sources = {}
        self.weight.data = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)

    def finish_loading(self) -> None:
        """Stack the kept source tensors into the layer's compressed weight (no-op unless keep_compressed).
        A weight whose code would not be smaller than its dense form (a tensor whose exponents no window
        holds, such as one of mostly exact zeros) is held dense instead: losslessly, only not smaller."""
        if self._coded_sources is None:
            return
        sources, next_row = [], 0
        for first_row, coded in sorted(self._coded_sources.items()):
            if first_row != next_row:
                raise CheckpointError(f"compressed weight: rows {next_row}..{first_row} were never loaded")
            sources.append(coded)
            next_row += coded.shape[0]
        if next_row != self._weight_shape[0]:
            raise CheckpointError(f"compressed weight: {next_row} of {self._weight_shape[0]} rows loaded")
        self._coded_sources = None
        compressed = CompressedWeight.stack(sources)
        if compressed.nbytes >= compressed.shape.numel() * compressed.dtype.itemsize:
            self.weight.data = compressed.decode()
            return
        self.compressed = compressed

    def _place(self, param: nn.Parameter, loaded: Loaded, what: str, rows: tuple[int, int] | None = None,
               along: tuple[int, int, int] | None = None) -> None:
        """Copy ``loaded``, narrowed ``along`` (dim, start, length), into ``param`` (its ``rows``
        (first, count) only), or keep its coded slice when the layer holds its weight compressed."""
        if self._coded_sources is None or param is not self.weight:
            target = param if rows is None else param.data.narrow(0, *rows)
            _copy(target, loaded if along is None else narrow(loaded, *along), what)
            return
        first, count = rows if rows is not None else (0, self._weight_shape[0])
        shape = list(loaded.shape)
        if along is not None:
            shape[along[0]] = along[2]
        if tuple(shape) != (count, self._weight_shape[1]):
            raise CheckpointError(f"{what}: checkpoint shape {tuple(shape)} does not fit "
                                  f"{(count, self._weight_shape[1])}")
        self._coded_sources[first] = coded_source(loaded, along, self.weight.dtype, self.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.matmul_weight, self.bias)

    def forward_normed(self, x: torch.Tensor, residual: torch.Tensor | None, norm: nn.Module
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward(norm(x + residual)) and the new residual, in one kernel where the backend can.

        `norm` is an RMSNorm (weight, eps); without a residual the new residual is x itself.
        """
        fused = self.ops.rms_norm_linear if self.ops is not None else reference.rms_norm_linear
        return fused(x, residual, norm.weight, norm.eps, self.matmul_weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output rows split across ranks; each rank returns its slice of the output."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, ops: Kernels | None = None) -> None:
        self.output_size_per_rank = _divide(output_size, tp_size(), "output size")
        super().__init__(input_size, self.output_size_per_rank, bias, ops)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        rows = self.output_size_per_rank
        self._place(param, loaded, "column-parallel weight", along=(0, tp_rank() * rows, rows))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs in one matmul (gate and up projections); shard_id = index."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, ops: Kernels | None = None) -> None:
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, ops)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        index = int(shard_id)  # type: ignore[arg-type]
        rows = self.output_sizes[index] // tp_size()
        offset = sum(self.output_sizes[:index]) // tp_size()
        self._place(param, loaded, f"merged part {index}", rows=(offset, rows), along=(0, tp_rank() * rows, rows))


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
        self._place(param, loaded, f"{shard_id}_proj", rows=(offset, rows), along=(0, start, rows))


class RowParallelLinear(LinearBase):
    """Input columns split across ranks; partial sums are all-reduced, the bias added once."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, ops: Kernels | None = None) -> None:
        self.input_size_per_rank = _divide(input_size, tp_size(), "input size")
        super().__init__(self.input_size_per_rank, output_size, bias, ops)

    def weight_loader(self, param: nn.Parameter, loaded: Loaded, shard_id: object = None) -> None:
        if param is not self.weight:  # bias: whole on every rank
            _copy(param, loaded, "row-parallel bias")
            return
        cols = self.input_size_per_rank
        self._place(param, loaded, "row-parallel weight", along=(1, tp_rank() * cols, cols))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if tp_rank() == 0 else None
        return all_reduce(self.matmul(x, self.matmul_weight, bias))

    def forward_gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        """forward(silu(gate) * up) for gate_up = [gate | up], in one kernel where the backend can."""
        fused = self.ops.silu_and_mul_linear if self.ops is not None else reference.silu_and_mul_linear
        bias = self.bias if tp_rank() == 0 else None
        return all_reduce(fused(gate_up, self.matmul_weight, bias))

"""ECF weights kept coded in memory: a layer's slices of checkpoint tensors, decoded inside the matmul.

A linear layer that holds a ``CompressedWeight`` instead of a dense parameter reads each source
tensor's file parts (docs/weights-format.md) for its own rows or columns only:

- ``slice_rows`` / ``slice_cols`` cut a tensor's parts the way ``narrow`` cuts the dense tensor
  (a column slice starts at an even column, so it is a plain slice of the nibble plane), the
  escape list re-based to the slice; ``coded_source`` asks the reader for them;
- ``CompressedWeight.from_parts`` recodes them, on the device the layer runs on, into the kernels'
  form (weights/planes.py), and ``CompressedWeight.stack`` puts several source tensors one above
  the other (QKV, gate_up), each keeping its exponent window;
- ``share_scratch`` gives a model's weights the dense buffer that batches decode a weight into.

``CompressedWeight.decode`` is the plain-torch twin of the Triton decode: the CPU matmul and the
reference the kernels are tested against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch

from ..checkpoint_tensor import (
    CheckpointTensor,
    Loaded,
    check_range,
    materialize,
    narrow,
)
from ..errors import CompressedWeightsError, UnsupportedWeightsDtypeError
from . import planes
from .codec import Parts, decode_parts
from .format import (
    ESCAPE_COLS,
    ESCAPE_ROW_OFFSETS,
    ESCAPE_VALUES,
    EXPONENT_INDEX,
    EXPONENT_TABLE,
    SIGN_MANTISSA,
)


def slice_rows(parts: Parts, start: int, length: int) -> Parts:
    """The parts of ``tensor[start:start + length]`` (copies: the whole tensor's parts can go)."""
    offsets = parts[ESCAPE_ROW_OFFSETS]
    first, last = int(offsets[start]), int(offsets[start + length])
    return {
        SIGN_MANTISSA: parts[SIGN_MANTISSA][:, start:start + length].clone(),
        EXPONENT_INDEX: parts[EXPONENT_INDEX][start:start + length].clone(),
        EXPONENT_TABLE: parts[EXPONENT_TABLE].clone(),
        ESCAPE_ROW_OFFSETS: (offsets[start:start + length + 1] - first).to(torch.int32),
        ESCAPE_COLS: parts[ESCAPE_COLS][first:last].clone(),
        ESCAPE_VALUES: parts[ESCAPE_VALUES][first:last].clone(),
    }


def slice_cols(parts: Parts, start: int, length: int) -> Parts:
    """The parts of ``tensor[:, start:start + length]`` of a 2-D tensor; ``start`` must be even."""
    if start % 2:
        raise CompressedWeightsError(f"a slice of compressed columns must start at an even column, not {start}")
    rows = parts[EXPONENT_INDEX].shape[0]
    index = parts[EXPONENT_INDEX][:, start // 2:(start + length + 1) // 2].clone()
    if length % 2:  # the last byte's high nibble is the next column's, outside the slice: pad with zero
        index[:, -1] &= 0x0F
    offsets = parts[ESCAPE_ROW_OFFSETS].long()
    escape_rows = torch.repeat_interleave(torch.arange(rows), offsets.diff())
    cols = parts[ESCAPE_COLS]
    inside = (cols >= start) & (cols < start + length)
    kept_rows = escape_rows[inside]
    new_offsets = torch.zeros(rows + 1, dtype=torch.int64)
    new_offsets[1:] = torch.cumsum(torch.bincount(kept_rows, minlength=rows), 0)
    return {
        SIGN_MANTISSA: parts[SIGN_MANTISSA][:, :, start:start + length].clone(),
        EXPONENT_INDEX: index,
        EXPONENT_TABLE: parts[EXPONENT_TABLE].clone(),
        ESCAPE_ROW_OFFSETS: new_offsets.to(torch.int32),
        ESCAPE_COLS: (cols[inside] - start).to(torch.int32),
        ESCAPE_VALUES: parts[ESCAPE_VALUES][inside].clone(),
    }


@dataclass
class CompressedWeight:
    """A bfloat16 2-D weight ``[rows, cols]`` held coded in the kernels' form (weights/planes.py),
    possibly stacked from several source tensors, each with its own exponent window.

    ``planes`` is int32 ``[3, rows, groups]``, ``exponent_base`` uint8 ``[rows]`` the window of each
    row, ``escapes`` int32 ``[E, 4]`` the escaped groups' bit patterns; ``source_rows`` the rows of
    each source tensor, ``num_escapes`` how many of the weights lie outside their window.
    """

    dtype: torch.dtype
    planes: torch.Tensor
    exponent_base: torch.Tensor
    escapes: torch.Tensor
    cols: int
    source_rows: tuple[int, ...]
    num_escapes: int
    scratch: torch.Tensor | None = None  # dense buffer, shared by a model's weights: share_scratch

    @classmethod
    def from_dense(cls, matrix: torch.Tensor) -> CompressedWeight:
        """One source tensor, bfloat16 ``[rows, cols]``, coded on its own device."""
        coded, base, escapes, num_escapes = planes.encode(matrix)
        return cls(torch.bfloat16, coded, base, escapes, matrix.shape[1], (matrix.shape[0],), num_escapes)

    @classmethod
    def from_parts(cls, parts: Parts, dtype: torch.dtype, device: torch.device | str = "cpu") -> CompressedWeight:
        """One source tensor from its file parts (docs/weights-format.md), recoded on ``device``."""
        _check_bfloat16(dtype)
        rows = parts[EXPONENT_INDEX].shape[0]
        cols = parts[SIGN_MANTISSA].shape[2]
        on_device = {name: part.to(device) for name, part in parts.items()}
        return cls.from_dense(decode_parts(on_device, dtype, (rows, cols)))

    @classmethod
    def stack(cls, sources: list[CompressedWeight]) -> CompressedWeight:
        """``sources`` (same columns, same device) one above the other; each keeps its window."""
        if not sources:
            raise CompressedWeightsError("a compressed weight needs at least one source tensor")
        widths = sorted({source.cols for source in sources})
        if len(widths) != 1:
            raise CompressedWeightsError(f"stacked compressed tensors differ in columns: {widths}")
        if len(sources) == 1:
            return sources[0]
        rebased, first_entry = [], 0
        for source in sources:
            coded = source.planes.clone()
            escaped = planes.group_escaped(coded[planes.INDEX])
            coded[planes.LOW][escaped] += first_entry  # entry numbers into the stacked list
            rebased.append(coded)
            first_entry += source.escapes.shape[0]
        return cls(
            dtype=torch.bfloat16,
            planes=torch.cat(rebased, dim=1),
            exponent_base=torch.cat([source.exponent_base for source in sources]),
            escapes=torch.cat([source.escapes for source in sources]),
            cols=widths[0],
            source_rows=tuple(rows for source in sources for rows in source.source_rows),
            num_escapes=sum(source.num_escapes for source in sources),
        )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.planes.shape[1], self.cols))

    @property
    def device(self) -> torch.device:
        return self.planes.device

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the planes, the windows and the escapes."""
        return sum(t.numel() * t.element_size() for t in (self.planes, self.exponent_base, self.escapes))

    def to(self, device: torch.device | str) -> CompressedWeight:
        return replace(self, planes=self.planes.to(device), exponent_base=self.exponent_base.to(device),
                       escapes=self.escapes.to(device), scratch=None)

    def decode(self) -> torch.Tensor:
        """The dense weight, bit for bit (plain torch, on this weight's device)."""
        return planes.decode(self.planes, self.exponent_base, self.escapes, self.cols)

    def __repr__(self) -> str:
        return (f"CompressedWeight({tuple(self.shape)}, {self.dtype}, {len(self.source_rows)} source(s), "
                f"{self.num_escapes} escapes, {self.nbytes} bytes)")


# a linear layer's weight as the kernels take it: dense, or kept coded
Weight = torch.Tensor | CompressedWeight


def coded_source(loaded: Loaded, along: tuple[int, int, int] | None, dtype: torch.dtype,
                 device: torch.device | str) -> CompressedWeight:
    """``loaded`` narrowed ``along`` (dim, start, length), one source tensor of a layer, coded on ``device``.

    A tensor the file stores coded (in the dtype it loads in) is read coded, only the tiles that
    cover the slice, and recoded; any other (kept raw by the compressor, coded in another dtype, or
    a column range at an odd start, which the nibble plane cannot slice) is read dense and coded
    straight from that: lossless either way.
    """
    _check_bfloat16(dtype)
    if along is not None:
        check_range(loaded.shape, *along)
    parts = loaded.coded_parts(along) if isinstance(loaded, CheckpointTensor) else None
    if parts is None:
        dense = materialize(loaded) if along is None else narrow(loaded, *along)
        return CompressedWeight.from_dense(dense.to(device=device, dtype=dtype))
    return CompressedWeight.from_parts(parts, dtype, device)


def _check_bfloat16(dtype: torch.dtype) -> None:
    if dtype != torch.bfloat16:
        raise UnsupportedWeightsDtypeError(f"weights kept coded in memory are bfloat16, not {dtype}: "
                                           f"load with compressed_weights='decode_at_load'")


def share_scratch(weights: Iterable[CompressedWeight]) -> None:
    """Give a model's compressed weights one scratch buffer per device and dtype, the size of the
    largest, that a matmul of several rows decodes its weight into. Set while loading, before any
    CUDA graph is captured, so captured graphs keep pointing at it; another model has its own."""
    largest: dict[tuple[torch.device, torch.dtype], int] = {}
    weights = list(weights)
    for weight in weights:
        key = (weight.device, weight.dtype)
        largest[key] = max(largest.get(key, 0), weight.shape.numel())
    buffers = {key: torch.empty(numel, dtype=key[1], device=key[0]) for key, numel in largest.items()}
    for weight in weights:
        weight.scratch = buffers[(weight.device, weight.dtype)]


def held_weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of weights ``module`` holds: its parameters (each once) and its compressed weights."""
    params = {id(p): p.numel() * p.element_size() for p in module.parameters()}
    compressed = [m.compressed.nbytes for m in module.modules() if getattr(m, "compressed", None) is not None]
    return sum(params.values()) + sum(compressed)


def scratch_bytes(module: torch.nn.Module) -> int:
    """Bytes of the scratch buffers ``module``'s compressed weights share (each buffer once)."""
    buffers = {id(m.compressed.scratch): m.compressed.scratch for m in module.modules()
               if getattr(m, "compressed", None) is not None and m.compressed.scratch is not None}
    return sum(b.numel() * b.element_size() for b in buffers.values())

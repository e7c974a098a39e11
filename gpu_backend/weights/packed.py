"""ECF weights kept coded in memory: a layer's slices of checkpoint tensors, decoded inside the matmul.

A linear layer that holds a ``CompressedWeight`` instead of a dense parameter keeps each source
tensor's parts (docs/weights-format.md) for its own rows or columns only:

- ``slice_rows`` / ``slice_cols`` cut a tensor's parts the way ``narrow`` cuts the dense tensor
  (a column slice starts at an even column, so it is a plain slice of the nibble plane), the
  escape list re-based to the slice;
- ``CompressedWeight.stack`` puts the parts of several source tensors one above the other (QKV,
  gate_up): each keeps its own exponent table, which ``row_tables`` names per row;
- ``share_scratch`` gives a model's weights the dense buffer that batches decode a weight into.

``CompressedWeight.decode`` is the plain-torch twin of the Triton decode (per-row table lookup,
escapes written last): the CPU matmul and the reference the kernels are tested against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch

from ..checkpoint_tensor import (
    CheckpointTensor,
    Loaded,
    check_range,
    materialize,
    narrow,
)
from ..errors import CompressedWeightsError
from .codec import Parts, encode
from .format import (
    ESCAPE_COLS,
    ESCAPE_ROW_OFFSETS,
    ESCAPE_VALUES,
    EXPONENT_INDEX,
    EXPONENT_TABLE,
    SIGN_MANTISSA,
    layout_of,
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


def encode_dense(tensor: torch.Tensor) -> Parts:
    """The parts of a dense 2-D tensor (a source tensor the file keeps raw), coded here, on the CPU."""
    return encode(tensor.detach().cpu())


def coded_slice(loaded: Loaded, along: tuple[int, int, int] | None) -> Parts:
    """The parts of ``loaded`` narrowed ``along`` (dim, start, length) of a 2-D checkpoint tensor.

    A tensor the file stores coded (in the dtype it loads in) is sliced coded; any other (kept raw
    by the compressor, or coded in another dtype) is read dense and coded here, which is lossless.
    """
    if along is not None:
        check_range(loaded.shape, *along)
    # the reader reads (and checks) only the tiles that cover the slice; None: not stored coded in this
    # dtype, or a column range at an odd start, which the nibble plane cannot slice
    parts = loaded.coded_parts(along) if isinstance(loaded, CheckpointTensor) else None
    if parts is None:
        return encode_dense(materialize(loaded) if along is None else narrow(loaded, *along))
    return parts


@dataclass
class CompressedWeight:
    """A 2-D weight ``[rows, cols]`` held as ECF planes, possibly stacked from several source tensors.

    ``sign_mantissa`` is uint8 ``[B, rows, cols]`` (B = 1 for bfloat16), ``exponent_index`` uint8
    ``[rows, ceil(cols / 2)]``, ``tables`` uint8 ``[num_sources, 16]`` and ``row_tables`` uint8
    ``[rows]`` the table of each row; escapes are CSR by row (``escape_row_offsets``) with their
    rows listed too (``escape_rows``, for the scatter that patches a decoded weight).
    """

    dtype: torch.dtype
    sign_mantissa: torch.Tensor
    exponent_index: torch.Tensor
    tables: torch.Tensor
    row_tables: torch.Tensor
    escape_row_offsets: torch.Tensor
    escape_rows: torch.Tensor
    escape_cols: torch.Tensor
    escape_values: torch.Tensor
    scratch: torch.Tensor | None = None  # dense buffer, shared by a model's weights: share_scratch

    @classmethod
    def stack(cls, sources: list[Parts], dtype: torch.dtype, device: torch.device | str = "cpu") -> CompressedWeight:
        """The parts of ``sources`` (same column count) one above the other, on ``device``."""
        if not sources:
            raise CompressedWeightsError("a compressed weight needs at least one source tensor")
        cols = {tuple(p[SIGN_MANTISSA].shape[2:]) for p in sources}
        if len(cols) != 1:
            raise CompressedWeightsError(f"stacked compressed tensors differ in columns: {sorted(cols)}")
        row_counts = [p[EXPONENT_INDEX].shape[0] for p in sources]
        bases = torch.tensor([0, *row_counts]).cumsum(0)
        escape_bases = [0]
        for p in sources:
            escape_bases.append(escape_bases[-1] + p[ESCAPE_COLS].numel())
        offsets = torch.cat([sources[0][ESCAPE_ROW_OFFSETS][:1].long()] + [
            p[ESCAPE_ROW_OFFSETS][1:].long() + base for p, base in zip(sources, escape_bases[:-1], strict=True)])
        at = sources[0][SIGN_MANTISSA].device  # the parts' device: the CPU when read, or where they were coded
        escape_rows = torch.cat([
            torch.repeat_interleave(torch.arange(n, device=at), p[ESCAPE_ROW_OFFSETS].long().diff()) + int(base)
            for p, n, base in zip(sources, row_counts, bases[:-1], strict=True)])
        if len(sources) > 256:
            raise CompressedWeightsError(f"a compressed weight stacks at most 256 source tensors, not {len(sources)}")
        row_tables = torch.cat([torch.full((n,), i, dtype=torch.uint8, device=at) for i, n in enumerate(row_counts)])
        weight = cls(
            dtype=dtype,
            sign_mantissa=torch.cat([p[SIGN_MANTISSA] for p in sources], dim=1),
            exponent_index=torch.cat([p[EXPONENT_INDEX] for p in sources]),
            tables=torch.stack([p[EXPONENT_TABLE] for p in sources]),
            row_tables=row_tables,
            escape_row_offsets=offsets.to(torch.int32),
            escape_rows=escape_rows.to(torch.int32),
            escape_cols=torch.cat([p[ESCAPE_COLS] for p in sources]).to(torch.int32),
            escape_values=torch.cat([p[ESCAPE_VALUES] for p in sources]),
        )
        return weight.to(device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.sign_mantissa.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.sign_mantissa.device

    @property
    def num_escapes(self) -> int:
        return self.escape_values.numel()

    @property
    def nbytes(self) -> int:
        """Bytes held in memory, every plane and list included."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def to(self, device: torch.device | str) -> CompressedWeight:
        return CompressedWeight(self.dtype, **{name: t.to(device).contiguous() for name, t in self._tensors().items()})

    def decode(self) -> torch.Tensor:
        """The dense weight, bit for bit (plain torch, on this weight's device)."""
        layout = layout_of(self.dtype)
        rows, cols = self.shape
        packed = self.exponent_index.to(torch.int32)
        index = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(rows, -1)[:, :cols]
        exponent = self.tables.to(torch.int32)[self.row_tables.long()[:, None], index.long()]
        top = self.sign_mantissa[-1].to(torch.int32)
        high = ((top & 0x80) << 8) | (exponent << 7) | (top & 0x7F)  # sign, exponent, mantissa's top 7 bits
        shift = layout.total_bits - 16
        bits = (high.to(torch.int64) << shift)
        for plane in range(layout.sign_mantissa_bytes - 1):  # float32's two low mantissa bytes
            bits |= self.sign_mantissa[plane].to(torch.int64) << (8 * plane)
        bits = _wrap(bits, layout.total_bits).to(layout.bits_dtype)
        bits[self.escape_rows.long(), self.escape_cols.long()] = self.escape_values
        return bits.view(self.dtype)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("dtype", "scratch")}

    def __repr__(self) -> str:
        return (f"CompressedWeight({tuple(self.shape)}, {self.dtype}, {len(self.tables)} table(s), "
                f"{self.num_escapes} escapes, {self.nbytes} bytes)")


def _wrap(bits: torch.Tensor, width: int) -> torch.Tensor:
    """Unsigned ``width``-bit patterns as the signed integers of that width (int16/int32 views)."""
    return torch.where(bits >= 1 << (width - 1), bits - (1 << width), bits)


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

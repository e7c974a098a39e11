"""Opening a weights file whichever way it is stored: plain safetensors, or ECF-compressed.

``open_weights(file)`` gives the handle the loaders already use (``keys``, ``get_slice``,
``get_tensor``); for a compressed file the names are the checkpoint's own and each tensor is checked
against its checksums and decoded to its dense dtype when indexed.

A tensor-parallel rank reads only its slice: indexing a version-2 coded tensor by a row range, or a
2-D one by a column range (what ``CheckpointTensor.narrow`` does), reads just the tiles of its parts
that cover the range, checks each tile's checksum, and decodes the range alone.
``CompressedSlice.parts(along)`` (through ``CheckpointTensor.coded_parts(along)``) gives the same
slice still coded, cut and re-based as weights/packed.py's ``slice_rows``/``slice_cols`` cut the whole
tensor's parts, for a layer that keeps its weight coded (kernels/triton_linear.py decodes it).
A version-1 file, checksummed per part, is read whole and then cut, as before.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ..errors import CompressedWeightsError, WeightsChecksumError
from .codec import Parts, crc32, decode_parts
from .format import (
    CODED,
    ROW_BLOCK_PARTS,
    TILED_PARTS,
    TileGrid,
    ESCAPE_COLS,
    ESCAPE_ROW_OFFSETS,
    ESCAPE_VALUES,
    EXPONENT_INDEX,
    EXPONENT_TABLE,
    PARTS,
    SIGN_MANTISSA,
    TABLE_SIZE,
    FileHeader,
    TensorEntry,
    layout_of,
    matrix_shape,
    part_name,
)
from .packed import slice_cols, slice_rows

# safetensors' dtype names, which CheckpointTensor reads from get_slice(...).get_dtype()
_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32"}
# the parts' dtypes, as a safetensors header names them
_PART_DTYPES = {"U8": torch.uint8, "I16": torch.int16, "I32": torch.int32}
Along = tuple[int, int, int]  # (dim, start, length): the rows (dim 0) or columns (dim 1) of a slice
CPU = torch.device("cpu")


@contextmanager
def open_weights(file: Path, decode_device: torch.device | str = "cpu") -> Iterator[Any]:
    """A read handle on ``file``; raises SafetensorError for a file that is not safetensors at all.

    Coded tensors are decoded on ``decode_device`` (their parts, smaller than the tensor, go there first).
    """
    with safe_open(file, framework="pt", device="cpu") as handle:
        header = FileHeader.from_metadata(handle.metadata(), str(file))
        yield handle if header is None else CompressedFile(handle, header, file, torch.device(decode_device))


def is_compressed(file: Path) -> bool:
    """Whether ``file`` holds ECF-compressed weights (its safetensors metadata names the format)."""
    with safe_open(file, framework="pt", device="cpu") as handle:
        return FileHeader.from_metadata(handle.metadata(), str(file)) is not None


class CompressedFile:
    """An open compressed file, read like a safetensors handle under the checkpoint's own tensor names."""

    def __init__(self, handle: Any, header: FileHeader, file: Path, decode_device: torch.device) -> None:
        self._handle = handle
        self.header = header
        self.file = file
        self.decode_device = decode_device
        stored = set(handle.keys())
        expected: set[str] = set()
        for name, entry in header.tensors.items():
            wanted = [part_name(name, part) for part in PARTS] if entry.encoding == CODED else [name]
            missing = [w for w in wanted if w not in stored]
            if missing:
                raise CompressedWeightsError(f"{file}: tensor {name!r} is missing its stored part {missing[0]!r}")
            expected.update(wanted)
        unlisted = sorted(stored - expected)
        if unlisted:  # a tensor the header does not list would never load: the file is not as written
            raise CompressedWeightsError(f"{file}: stored tensor {unlisted[0]!r} is not in the compressed-weights "
                                         "header")

    def keys(self) -> list[str]:
        return list(self.header.tensors)

    def metadata(self) -> dict[str, str]:
        return self._handle.metadata()

    def get_slice(self, name: str) -> CompressedSlice:
        return CompressedSlice(self._handle, name, self._entry(name), self.file, self.decode_device)

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.get_slice(name)[...]

    def _entry(self, name: str) -> TensorEntry:
        try:
            return self.header.tensors[name]
        except KeyError:
            raise CompressedWeightsError(f"{self.file}: no tensor {name!r}") from None


class CompressedSlice:
    """One checkpoint tensor of a compressed file, shaped like safetensors' PySafeSlice.

    ``bytes_read`` counts the file bytes read so far (a coded slice reads its covering tiles only).
    """

    def __init__(self, handle: Any, name: str, entry: TensorEntry, file: Path,
                 decode_device: torch.device = CPU) -> None:
        self._handle = handle
        self.name = name
        self.entry = entry
        self.file = file
        self.decode_device = decode_device
        self.bytes_read = 0
        self._decoded: torch.Tensor | None = None

    def get_shape(self) -> list[int]:
        return list(self.entry.shape)

    def get_dtype(self) -> str:
        if self.entry.encoding != CODED:
            return self._handle.get_slice(self.name).get_dtype()
        return _SAFETENSORS_DTYPES[self.entry.torch_dtype]

    def __getitem__(self, index: Any) -> torch.Tensor:
        along = _row_or_column_range(index, self.entry.shape)
        if along is not None and self.entry.encoding == CODED and self.entry.tiled and self._decoded is None:
            return self._decode_range(*along)
        if self._decoded is None:
            self._decoded = self._read_checked()
        return self._decoded[index]

    def coded_parts(self, dtype: torch.dtype, along: Along | None = None) -> Parts | None:
        """``parts(along)`` when the tensor is coded and decodes to ``dtype``; else None, and None for
        columns from an odd start (a nibble plane cannot be cut there: the caller codes the dense slice)."""
        if self.entry.encoding != CODED or self.entry.torch_dtype != dtype:
            return None
        if along is not None and along[0] == 1 and along[1] % 2:
            return None
        return self.parts(along)

    def parts(self, along: Along | None = None) -> Parts:
        """The coded parts of the tensor, or of its slice ``along`` = (dim, start, length): rows (dim 0),
        or columns of a 2-D tensor from an even start (dim 1), cut and re-based as ``slice_rows`` and
        ``slice_cols`` cut the whole tensor's parts. Every byte read is checked against its checksum;
        in a version-2 file only the tiles covering the slice are read (CODED tensors only)."""
        num_escapes = self._check_stored()
        rows, cols = matrix_shape(self.entry.shape)
        if along is not None:
            _check_along(self.name, self.entry.shape, along)
        if not self.entry.tiled:  # version 1: every part read whole, its one checksum checked, then cut
            parts = {part: self._read(part, (Ellipsis,)) for part in PARTS}
            for part, tensor in parts.items():
                self._check(f"stored part {part!r}", crc32(tensor), self.entry.part_crc32[part])
            check_parts(self.name, parts, self.entry)
            return parts if along is None else _cut(parts, along)
        grid = self.entry.grid()
        if along is None:
            parts = self._read_tiles(grid, range(grid.num_row_blocks), range(grid.num_col_blocks), num_escapes)
            check_parts(self.name, parts, self.entry)
            return parts
        dim, start, length = along
        if dim == 0:
            blocks = grid.row_blocks(start, start + length)
            parts = self._read_tiles(grid, blocks, range(grid.num_col_blocks), num_escapes)
            sliced = slice_rows(parts, start - grid.row_bounds(blocks.start)[0], length)
            shape = (length, *self.entry.shape[1:])
        else:
            blocks = grid.col_blocks(start, start + length)
            parts = self._read_tiles(grid, range(grid.num_row_blocks), blocks, num_escapes)
            sliced = slice_cols(parts, start - grid.col_bounds(blocks.start)[0], length)
            shape = (rows, length)
        check_parts(self.name, sliced, replace(self.entry, shape=shape))
        return sliced

    def _read_tiles(self, grid: TileGrid, row_blocks: range, col_blocks: range, num_escapes: int) -> Parts:
        """The parts of the rows of ``row_blocks`` by the columns of ``col_blocks``, each tile checked, with the
        escape lists of those rows (their columns counted from the first column read; not cut to it)."""
        table = self._read_whole(EXPONENT_TABLE)
        offsets = self._read_whole(ESCAPE_ROW_OFFSETS)
        if offsets.numel() != grid.rows + 1 or offsets[0] != 0 or offsets[-1] != num_escapes or \
                bool((offsets.diff() < 0).any()):
            raise CompressedWeightsError(f"tensor {self.name!r}: escape row offsets do not run 0..{num_escapes}")
        first_row, end_row = grid.row_bounds(row_blocks.start)[0], grid.row_bounds(row_blocks[-1])[1]
        first_col, end_col = grid.col_bounds(col_blocks.start)[0], grid.col_bounds(col_blocks[-1])[1]
        rows, cols = slice(first_row, end_row), slice(first_col, end_col)
        parts = {SIGN_MANTISSA: self._read(SIGN_MANTISSA, (slice(None), rows, cols)),
                 EXPONENT_INDEX: self._read(EXPONENT_INDEX, (rows, slice(first_col // 2, -(-end_col // 2))))}
        for part in TILED_PARTS:
            for i, j, tile in plane_tiles(part, parts[part], grid, row_blocks, col_blocks):
                (top, bottom), (left, right) = grid.row_bounds(i), grid.col_bounds(j)
                self._check(f"stored part {part!r}, tile ({i}, {j}) (rows {top}..{bottom - 1}, columns "
                            f"{left}..{right - 1}),", tile_crc32(tile),
                            self.entry.tile_crc32[part][i * grid.num_col_blocks + j])
        first, end = int(offsets[first_row]), int(offsets[end_row])
        for part in ROW_BLOCK_PARTS:
            parts[part] = self._read(part, (slice(first, end),))
            for i, entries in escape_blocks(parts[part], offsets, grid, row_blocks):
                top, bottom = grid.row_bounds(i)
                self._check(f"stored part {part!r}, row block {i} (the escapes of rows {top}..{bottom - 1}),",
                            crc32(entries), self.entry.tile_crc32[part][i])
        parts[ESCAPE_COLS] = (parts[ESCAPE_COLS] - first_col).to(torch.int32)
        parts[EXPONENT_TABLE] = table
        parts[ESCAPE_ROW_OFFSETS] = (offsets[first_row:end_row + 1] - first).to(torch.int32)
        return parts

    def _decode_range(self, dim: int, start: int, length: int) -> torch.Tensor:
        """Rows, or columns, ``start..start+length-1`` decoded from their tiles alone."""
        shift = start % 2 if dim == 1 else 0  # an odd first column: decode from the column before, drop it
        parts = self.parts((dim, start - shift, length + shift))
        shape = (length, *self.entry.shape[1:]) if dim == 0 else (self.entry.shape[0], length + shift)
        tensor = decode_parts({k: v.to(self.decode_device) for k, v in parts.items()}, self.entry.torch_dtype, shape)
        return tensor[:, shift:].contiguous() if shift else tensor

    def _read_checked(self) -> torch.Tensor:
        if self.entry.encoding == CODED:
            parts = {part: value.to(self.decode_device) for part, value in self.parts().items()}
            tensor = decode_parts(parts, self.entry.torch_dtype, self.entry.shape)
            if tensor.device.type == "cpu":  # on a GPU the parts' checksums stand for it: no copy back
                self._check("decoded tensor", crc32(tensor), self.entry.crc32)
        else:
            tensor = self._handle.get_tensor(self.name)
            self.bytes_read += tensor.numel() * tensor.element_size()
            self._check("stored tensor", crc32(tensor), self.entry.crc32)
        return tensor

    def _read(self, part: str, index: tuple[Any, ...]) -> torch.Tensor:
        tensor = self._handle.get_slice(part_name(self.name, part))[index]
        self.bytes_read += tensor.numel() * tensor.element_size()
        return tensor

    def _read_whole(self, part: str) -> torch.Tensor:
        tensor = self._read(part, (Ellipsis,))
        self._check(f"stored part {part!r}", crc32(tensor), self.entry.part_crc32[part])
        return tensor

    def _check_stored(self) -> int:
        """The stored parts' shapes and dtypes (from the safetensors header, before reading any data) are those
        the entry implies, and a version-2 entry lists a checksum per tile; returns the number of escapes."""
        stored = {part: self._handle.get_slice(part_name(self.name, part)) for part in PARTS}
        num_escapes = stored[ESCAPE_COLS].get_shape()[0] if len(stored[ESCAPE_COLS].get_shape()) == 1 else -1
        for part, (shape, dtype) in expected_parts(self.entry, num_escapes).items():
            got_shape = tuple(stored[part].get_shape())
            got_dtype = _PART_DTYPES.get(stored[part].get_dtype(), stored[part].get_dtype())
            if got_shape != shape or got_dtype != dtype:
                raise CompressedWeightsError(f"tensor {self.name!r}: part {part!r} is {got_dtype} {got_shape}, "
                                             f"expected {dtype} {shape}")
        if self.entry.tiled:
            grid = self.entry.grid()
            for part, checksums in self.entry.tile_crc32.items():
                if len(checksums) != grid.num_checksums(part):
                    raise CompressedWeightsError(
                        f"{self.file}: tensor {self.name!r}: the header lists {len(checksums)} checksums for part "
                        f"{part!r}, but its {grid.tile_rows}x{grid.tile_cols} tiles need {grid.num_checksums(part)}")
        return num_escapes

    def _check(self, what: str, computed: int, expected: int) -> None:
        if computed != expected:
            raise WeightsChecksumError(
                f"{self.file}: tensor {self.name!r}: {what} has crc32 {computed:08x} but the header says "
                f"{expected:08x}; the file is corrupted (compress the original checkpoint again)")


def plane_tiles(part: str, block: torch.Tensor, grid: TileGrid, row_blocks: range, col_blocks: range
                ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(i, j, tile) for the tiles of ``block``: a plane part's (``TILED_PARTS``) rows of ``row_blocks`` by its
    columns of ``col_blocks``; an ``exponent_index`` tile is its weights' bytes, half as many columns."""
    per_byte = 2 if part == EXPONENT_INDEX else 1
    first_row = grid.row_bounds(row_blocks.start)[0]
    first_col = grid.col_bounds(col_blocks.start)[0] // per_byte
    for i in row_blocks:
        top, bottom = grid.row_bounds(i)
        for j in col_blocks:
            left, right = grid.col_bounds(j)
            yield i, j, block[..., top - first_row:bottom - first_row,
                              left // per_byte - first_col:-(-right // per_byte) - first_col]


def tile_crc32(tile: torch.Tensor) -> int:
    """``codec.crc32`` of a strided view of a CPU uint8 plane: numpy gathers its rows (torch's copy of a
    strided uint8 view is an order of magnitude slower)."""
    return zlib.crc32(np.ascontiguousarray(tile.numpy())) if tile.numel() else 0


def escape_blocks(entries: torch.Tensor, offsets: torch.Tensor, grid: TileGrid, row_blocks: range
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """(i, its entries) for each row block of ``row_blocks``: ``entries`` is an escape list's run for the rows of
    ``row_blocks``, ``offsets`` the whole tensor's escape row offsets."""
    base = int(offsets[grid.row_bounds(row_blocks.start)[0]])
    for i in row_blocks:
        top, bottom = grid.row_bounds(i)
        yield i, entries[int(offsets[top]) - base:int(offsets[bottom]) - base]


def tile_checksums(parts: Parts, grid: TileGrid) -> dict[str, tuple[int, ...]]:
    """A whole coded tensor's version-2 checksums: per tile of each plane, per row block of each escape list."""
    row_blocks, col_blocks = range(grid.num_row_blocks), range(grid.num_col_blocks)
    checksums = {part: tuple(tile_crc32(tile) for _, _, tile in plane_tiles(part, parts[part], grid, row_blocks,
                                                                            col_blocks))
                 for part in TILED_PARTS}
    for part in ROW_BLOCK_PARTS:
        checksums[part] = tuple(crc32(entries) for _, entries in
                                escape_blocks(parts[part], parts[ESCAPE_ROW_OFFSETS], grid, row_blocks))
    return checksums


def _row_or_column_range(index: Any, shape: tuple[int, ...]) -> Along | None:
    """(dim, start, length) when ``index`` picks a range of rows, or of a 2-D tensor's columns, and nothing
    else (what ``CheckpointTensor.narrow`` asks); None for any other index."""
    items = index if isinstance(index, tuple) else (index,)
    if not shape or len(items) > len(shape) or not all(isinstance(i, slice) and i.step in (None, 1) for i in items):
        return None
    cut = [dim for dim, item in enumerate(items) if item != slice(None)]
    if len(cut) != 1 or cut[0] > 1 or (cut[0] == 1 and len(shape) != 2):
        return None
    start, stop, _ = items[cut[0]].indices(shape[cut[0]])
    return (cut[0], start, stop - start) if stop > start else None


def _check_along(name: str, shape: tuple[int, ...], along: Along) -> None:
    dim, start, length = along
    if dim not in (0, 1) or (dim == 1 and len(shape) != 2) or length < 1 or start < 0 or \
            start + length > shape[dim]:
        raise CompressedWeightsError(f"tensor {name!r} of shape {list(shape)} has no coded slice of {length} "
                                     f"{'rows' if dim == 0 else 'columns'} from {start}")


def _cut(parts: Parts, along: Along) -> Parts:
    dim, start, length = along
    return slice_rows(parts, start, length) if dim == 0 else slice_cols(parts, start, length)


def expected_parts(entry: TensorEntry, num_escapes: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each part's shape and dtype, as the entry's shape and dtype imply them."""
    layout = layout_of(entry.torch_dtype)
    rows, cols = matrix_shape(entry.shape)
    return {
        SIGN_MANTISSA: ((layout.sign_mantissa_bytes, rows, cols), torch.uint8),
        EXPONENT_INDEX: ((rows, (cols + 1) // 2), torch.uint8),
        EXPONENT_TABLE: ((TABLE_SIZE,), torch.uint8),
        ESCAPE_ROW_OFFSETS: ((rows + 1,), torch.int32),
        ESCAPE_COLS: ((num_escapes,), torch.int32),
        ESCAPE_VALUES: ((num_escapes,), layout.bits_dtype),
    }


def check_parts(name: str, parts: Parts, entry: TensorEntry) -> None:
    """The parts have the shapes and dtypes the header's shape and dtype imply."""
    _, cols = matrix_shape(entry.shape)
    num_escapes = parts[ESCAPE_COLS].numel()
    for part, (shape, dtype) in expected_parts(entry, num_escapes).items():
        if tuple(parts[part].shape) != shape or parts[part].dtype != dtype:
            raise CompressedWeightsError(f"tensor {name!r}: part {part!r} is {parts[part].dtype} "
                                         f"{tuple(parts[part].shape)}, expected {dtype} {shape}")
    offsets = parts[ESCAPE_ROW_OFFSETS]
    if offsets[0] != 0 or offsets[-1] != num_escapes or bool((offsets.diff() < 0).any()):
        raise CompressedWeightsError(f"tensor {name!r}: escape row offsets do not run 0..{num_escapes}")
    if num_escapes and not bool(((parts[ESCAPE_COLS] >= 0) & (parts[ESCAPE_COLS] < cols)).all()):
        raise CompressedWeightsError(f"tensor {name!r}: an escape column lies outside 0..{cols - 1}")

"""Coding one tensor into ECF parts and back, bit for bit, with whole-tensor torch ops.

``decode_parts`` is the plain-torch reference of the decode a GEMV/GEMM kernel does per tile: unpack
the nibble, look its exponent up in the 16-entry table, put sign, exponent and mantissa together,
then overwrite the row's escaped columns with their stored bit patterns.
"""

from __future__ import annotations

import zlib

import torch

from .format import (
    ESCAPE_COLS,
    ESCAPE_INDEX,
    ESCAPE_ROW_OFFSETS,
    ESCAPE_VALUES,
    EXPONENT_INDEX,
    EXPONENT_TABLE,
    SIGN_MANTISSA,
    TABLE_SIZE,
    FloatLayout,
    layout_of,
    matrix_shape,
)

Parts = dict[str, torch.Tensor]
NUM_EXPONENTS = 256


def crc32(tensor: torch.Tensor) -> int:
    """CRC-32 (zlib) of the tensor's bytes in memory order."""
    flat = tensor.detach().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def exponent_histogram(tensor: torch.Tensor) -> torch.Tensor:
    """How many weights have each biased exponent 0..255 (int64 [256])."""
    layout = layout_of(tensor.dtype)
    _, exponent = _split_bytes(tensor.detach().cpu().contiguous().reshape(1, -1), layout)
    return torch.bincount(exponent.reshape(-1).long(), minlength=NUM_EXPONENTS)


def exponent_table(histogram: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The 15 most common exponents, most common first (ties: smaller exponent first), as uint8 [16]
    padded with zeros, and how many of its entries are used."""
    order = sorted(range(NUM_EXPONENTS), key=lambda e: (-int(histogram[e]), e))
    used = [e for e in order[:ESCAPE_INDEX] if histogram[e] > 0]
    table = torch.zeros(TABLE_SIZE, dtype=torch.uint8)
    table[:len(used)] = torch.tensor(used, dtype=torch.uint8)
    return table, len(used)


def encode(tensor: torch.Tensor) -> Parts:
    """The ECF parts of ``tensor`` (bfloat16 or float32, at least 1-D), whatever its escape rate."""
    layout = layout_of(tensor.dtype)
    rows, cols = matrix_shape(tuple(tensor.shape))
    matrix = tensor.detach().cpu().contiguous().reshape(rows, cols)
    sign_mantissa, exponent = _split_bytes(matrix, layout)
    exponent = exponent.long()
    table, num_used = exponent_table(torch.bincount(exponent.reshape(-1), minlength=NUM_EXPONENTS))
    lookup = torch.full((NUM_EXPONENTS,), ESCAPE_INDEX, dtype=torch.uint8)
    lookup[table[:num_used].long()] = torch.arange(num_used, dtype=torch.uint8)
    index = lookup[exponent]
    escape_rows, escape_cols = torch.nonzero(index == ESCAPE_INDEX, as_tuple=True)
    return {
        SIGN_MANTISSA: sign_mantissa,
        EXPONENT_INDEX: _pack_nibbles(index),
        EXPONENT_TABLE: table,
        ESCAPE_ROW_OFFSETS: _row_offsets(escape_rows, rows),
        ESCAPE_COLS: escape_cols.to(torch.int32),
        ESCAPE_VALUES: matrix.view(layout.bits_dtype)[escape_rows, escape_cols].clone(),
    }


def decode_parts(parts: Parts, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor ``encode`` was given, from its parts, on the parts' device.

    Works on bytes, little-endian, as a kernel would: the top byte of a weight is its sign and the
    exponent's high 7 bits, the next byte the exponent's low bit and the mantissa's high 7 bits;
    the sign-mantissa planes below the top one are the weight's lower bytes as they are.
    """
    layout = layout_of(dtype)
    rows, cols = matrix_shape(shape)
    planes = parts[SIGN_MANTISSA]
    index = _unpack_nibbles(parts[EXPONENT_INDEX], cols).long()
    table = parts[EXPONENT_TABLE]
    top_plane = planes[-1]
    high = (top_plane & 0x80) | (table >> 1)[index]
    next_high = (top_plane & 0x7F) | ((table & 1) << 7)[index]
    weight_bytes = torch.stack([*planes[:-1], next_high, high], dim=-1)  # [rows, cols, bytes], lowest first
    bits = weight_bytes.view(layout.bits_dtype).reshape(rows, cols)
    offsets = parts[ESCAPE_ROW_OFFSETS].long()
    escape_rows = torch.repeat_interleave(torch.arange(rows, device=offsets.device), offsets.diff())
    bits[escape_rows, parts[ESCAPE_COLS].long()] = parts[ESCAPE_VALUES]
    return bits.view(dtype).reshape(shape)


def coded_bytes(parts: Parts) -> int:
    return sum(part.numel() * part.element_size() for part in parts.values())


def _split_bytes(matrix: torch.Tensor, layout: FloatLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 [bytes, rows, cols] sign-mantissa planes, uint8 [rows, cols] biased exponents), from the bytes."""
    weight_bytes = matrix.view(torch.uint8).reshape(*matrix.shape, layout.total_bits // 8)  # little-endian
    high, next_high = weight_bytes[..., -1], weight_bytes[..., -2]
    exponent = ((high & 0x7F) << 1) | (next_high >> 7)
    top_plane = (high & 0x80) | (next_high & 0x7F)
    planes = torch.stack([*weight_bytes[..., :-2].unbind(-1), top_plane])
    return planes, exponent


def _pack_nibbles(index: torch.Tensor) -> torch.Tensor:
    """[rows, cols] of 0..15 -> uint8 [rows, ceil(cols/2)]: even columns low nibble, odd high."""
    if index.shape[1] % 2:
        index = torch.nn.functional.pad(index, (0, 1))
    return (index[:, 0::2] | (index[:, 1::2] << 4)).to(torch.uint8)


def _unpack_nibbles(packed: torch.Tensor, cols: int) -> torch.Tensor:
    unpacked = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
    return unpacked[:, :cols]


def _row_offsets(escape_rows: torch.Tensor, rows: int) -> torch.Tensor:
    offsets = torch.zeros(rows + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(escape_rows, minlength=rows), 0)
    return offsets.to(torch.int32)

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
    _, exponent, _ = _split(tensor.reshape(-1), layout_of(tensor.dtype))
    return torch.bincount(exponent, minlength=NUM_EXPONENTS)


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
    sign, exponent, mantissa = _split(matrix, layout)
    table, num_used = exponent_table(torch.bincount(exponent.reshape(-1), minlength=NUM_EXPONENTS))
    lookup = torch.full((NUM_EXPONENTS,), ESCAPE_INDEX, dtype=torch.int64)
    lookup[table[:num_used].long()] = torch.arange(num_used)
    index = lookup[exponent]
    escape_rows, escape_cols = torch.nonzero(index == ESCAPE_INDEX, as_tuple=True)
    return {
        SIGN_MANTISSA: _byte_planes((sign << layout.mantissa_bits) | mantissa, layout.sign_mantissa_bytes),
        EXPONENT_INDEX: _pack_nibbles(index),
        EXPONENT_TABLE: table,
        ESCAPE_ROW_OFFSETS: _row_offsets(escape_rows, rows),
        ESCAPE_COLS: escape_cols.to(torch.int32),
        ESCAPE_VALUES: matrix.view(layout.bits_dtype)[escape_rows, escape_cols].clone(),
    }


def decode_parts(parts: Parts, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor ``encode`` was given, from its parts, on the parts' device."""
    layout = layout_of(dtype)
    rows, cols = matrix_shape(shape)
    sign_mantissa = _join_byte_planes(parts[SIGN_MANTISSA])
    index = _unpack_nibbles(parts[EXPONENT_INDEX], cols)
    exponent = parts[EXPONENT_TABLE].to(torch.int32)[index.long()]
    sign = sign_mantissa >> layout.mantissa_bits
    magnitude = (exponent << layout.mantissa_bits) | (sign_mantissa & ((1 << layout.mantissa_bits) - 1))
    bits = _with_sign(magnitude, sign, layout)
    offsets = parts[ESCAPE_ROW_OFFSETS].long()
    escape_rows = torch.repeat_interleave(torch.arange(rows, device=offsets.device), offsets.diff())
    bits[escape_rows, parts[ESCAPE_COLS].long()] = parts[ESCAPE_VALUES]
    return bits.view(dtype).reshape(shape)


def coded_bytes(parts: Parts) -> int:
    return sum(part.numel() * part.element_size() for part in parts.values())


def _split(tensor: torch.Tensor, layout: FloatLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sign, biased exponent, mantissa) of each element, as int32 (int64 exponent, for indexing)."""
    bits = tensor.view(layout.bits_dtype).to(torch.int32)  # sign-extended: shifts and masks below undo it
    sign = (bits < 0).to(torch.int32)
    exponent = ((bits >> layout.mantissa_bits) & (NUM_EXPONENTS - 1)).long()
    mantissa = bits & ((1 << layout.mantissa_bits) - 1)
    return sign, exponent, mantissa


def _with_sign(magnitude: torch.Tensor, sign: torch.Tensor, layout: FloatLayout) -> torch.Tensor:
    # two's complement: setting the top bit of a non-negative value is adding -2**(bits-1); never overflows
    top = torch.tensor(-(1 << (layout.total_bits - 1)), dtype=torch.int32, device=magnitude.device)
    return (magnitude + sign * top).to(layout.bits_dtype)


def _byte_planes(values: torch.Tensor, num_bytes: int) -> torch.Tensor:
    """uint8 [num_bytes, *values.shape], plane 0 the lowest byte."""
    return torch.stack([(values >> (8 * plane)) & 0xFF for plane in range(num_bytes)]).to(torch.uint8)


def _join_byte_planes(planes: torch.Tensor) -> torch.Tensor:
    values = planes[0].to(torch.int32)
    for plane in range(1, planes.shape[0]):
        values |= planes[plane].to(torch.int32) << (8 * plane)
    return values


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

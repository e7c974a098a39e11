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
    return torch.bincount(exponent.reshape(-1), minlength=NUM_EXPONENTS)


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
    table, num_used = exponent_table(torch.bincount(exponent.reshape(-1), minlength=NUM_EXPONENTS))
    lookup = torch.full((NUM_EXPONENTS,), ESCAPE_INDEX, dtype=torch.uint8)
    lookup[table[:num_used].long()] = torch.arange(num_used, dtype=torch.uint8)
    index = lookup[exponent.long()]
    escaped = torch.nonzero(index.reshape(-1) == ESCAPE_INDEX).squeeze(1)
    escape_rows, escape_cols = escaped // cols, escaped % cols
    return {
        SIGN_MANTISSA: sign_mantissa,
        EXPONENT_INDEX: _pack_nibbles(index),
        EXPONENT_TABLE: table,
        ESCAPE_ROW_OFFSETS: _row_offsets(escape_rows, rows),
        ESCAPE_COLS: escape_cols.to(torch.int32),
        ESCAPE_VALUES: matrix.view(layout.bits_dtype)[escape_rows, escape_cols].clone(),
    }


def encode_on_device(tensor: torch.Tensor) -> Parts:
    """``encode``'s parts, bit for bit, computed on the tensor's own device (CPU or CUDA) with no
    host round trip but the escape count: a GPU codes a weight it has just made without copying it.

    The table is ``exponent_table``'s order by one sort of (-count, exponent) keys; the index is
    filled by one comparison per table entry, last entry first, so a zero padding entry never wins
    over a used exponent 0 and no int64 copy of the weight is made.
    """
    layout = layout_of(tensor.dtype)
    rows, cols = matrix_shape(tuple(tensor.shape))
    matrix = tensor.detach().contiguous().reshape(rows, cols)
    sign_mantissa, exponent = _split_bytes(matrix, layout)
    histogram = torch.bincount(exponent.reshape(-1), minlength=NUM_EXPONENTS)
    exponents = torch.arange(NUM_EXPONENTS, device=matrix.device)
    top = torch.argsort(exponents - histogram * NUM_EXPONENTS)[:ESCAPE_INDEX]  # most common, then smaller
    used = histogram[top] > 0
    table = torch.zeros(TABLE_SIZE, dtype=torch.uint8, device=matrix.device)
    table[:ESCAPE_INDEX] = torch.where(used, top, 0).to(torch.uint8)
    index = torch.full_like(exponent, ESCAPE_INDEX)
    for position in reversed(range(ESCAPE_INDEX)):
        index.masked_fill_((exponent == table[position]) & used[position], position)
    escaped = torch.nonzero(index.reshape(-1) == ESCAPE_INDEX).squeeze(1)
    escape_rows, escape_cols = escaped // cols, escaped % cols
    offsets = torch.zeros(rows + 1, dtype=torch.int64, device=matrix.device)
    offsets[1:] = torch.cumsum(torch.bincount(escape_rows, minlength=rows), 0)
    return {
        SIGN_MANTISSA: sign_mantissa,
        EXPONENT_INDEX: _pack_nibbles(index),
        EXPONENT_TABLE: table,
        ESCAPE_ROW_OFFSETS: offsets.to(torch.int32),
        ESCAPE_COLS: escape_cols.to(torch.int32),
        ESCAPE_VALUES: matrix.view(layout.bits_dtype)[escape_rows, escape_cols].clone(),
    }


def decode_parts(parts: Parts, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor ``encode`` was given, from its parts, on the parts' device.

    Works on bytes, little-endian, as a kernel would: the top byte of a weight is its sign and the
    exponent's high 7 bits, the next byte the exponent's low bit and the mantissa's high 7 bits;
    the sign-mantissa planes below the top one are the weight's lower bytes as they are. Here one
    lookup per packed index byte yields the exponent bits of its two weights at once.
    """
    layout = layout_of(dtype)
    rows, cols = matrix_shape(shape)
    num_bytes = layout.total_bits // 8
    planes = parts[SIGN_MANTISSA]
    pair_lookup = _exponent_pair_lookup(parts[EXPONENT_TABLE], num_bytes)
    packed = parts[EXPONENT_INDEX].reshape(-1).to(torch.int32)
    weight_bytes = pair_lookup.index_select(0, packed).view(torch.uint8).reshape(rows, -1, num_bytes)[:, :cols]
    weight_bytes[..., -1] |= planes[-1] & 0x80
    weight_bytes[..., -2] |= planes[-1] & 0x7F
    for plane in range(num_bytes - 2):  # float32's two lowest mantissa bytes
        weight_bytes[..., plane] = planes[plane]
    bits = weight_bytes.reshape(rows, cols * num_bytes).contiguous().view(layout.bits_dtype)
    offsets = parts[ESCAPE_ROW_OFFSETS].long()
    escape_rows = torch.repeat_interleave(torch.arange(rows, device=offsets.device), offsets.diff())
    bits[escape_rows, parts[ESCAPE_COLS].long()] = parts[ESCAPE_VALUES]
    return bits.view(dtype).reshape(shape)


def _exponent_pair_lookup(table: torch.Tensor, num_bytes: int) -> torch.Tensor:
    """For each of the 256 index bytes, the two weights' bytes with only their exponent bits set,
    as one int32 (bfloat16) or int64 (float32) per entry."""
    codes = torch.arange(256, device=table.device)
    pairs = torch.zeros(256, 2, num_bytes, dtype=torch.uint8, device=table.device)
    for weight, index in enumerate((codes & 0x0F, codes >> 4)):
        exponent = table[index]
        pairs[:, weight, -1] = exponent >> 1
        pairs[:, weight, -2] = (exponent & 1) << 7
    return pairs.reshape(256, 2 * num_bytes).view(torch.int32 if num_bytes == 2 else torch.int64).reshape(256)


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


def _row_offsets(escape_rows: torch.Tensor, rows: int) -> torch.Tensor:
    offsets = torch.zeros(rows + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.bincount(escape_rows, minlength=rows), 0)
    return offsets.to(torch.int32)

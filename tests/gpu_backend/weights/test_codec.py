"""The ECF codec: bit-exact round trips of every kind of float, and the byte layout docs/weights-format.md states."""

from __future__ import annotations

import pytest
import torch

from gpu_backend.errors import UnsupportedWeightsDtypeError
from gpu_backend.weights.codec import (
    coded_bytes,
    decode_parts,
    encode,
    exponent_histogram,
    exponent_table,
)
from gpu_backend.weights.format import (
    ESCAPE_COLS,
    ESCAPE_INDEX,
    ESCAPE_ROW_OFFSETS,
    ESCAPE_VALUES,
    EXPONENT_INDEX,
    EXPONENT_TABLE,
    SIGN_MANTISSA,
)

BITS = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
# ±0, the smallest and largest subnormals, ±inf, NaNs with payloads, ±1, the largest finite value
BF16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x807F, 0x007F, 0x7F80, 0xFF80, 0x7FC0, 0x7FC1, 0xFFFF, 0x7F81, 0x3F80,
                 0xBF80, 0x7F7F]
FP32_SPECIALS = [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FC00001,
                 0xFFFFFFFF, 0x7F800001, 0x3F800000, 0x7F7FFFFF]


def round_trip(tensor: torch.Tensor) -> torch.Tensor:
    return decode_parts(encode(tensor), tensor.dtype, tuple(tensor.shape))


def assert_bits_equal(decoded: torch.Tensor, expected: torch.Tensor) -> None:
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    assert torch.equal(decoded.view(BITS[expected.dtype]), expected.view(BITS[expected.dtype]))


def from_bits(patterns: list[int], dtype: torch.dtype) -> torch.Tensor:
    width = 16 if dtype == torch.bfloat16 else 32
    signed = [p - (1 << width) if p >= 1 << (width - 1) else p for p in patterns]
    return torch.tensor(signed, dtype=BITS[dtype]).view(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 192), (3, 5, 7), (5,), (33, 1), (1, 4097)])
def test_round_trip_of_trained_like_weights(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    tensor = (0.02 * torch.randn(shape, generator=generator)).to(dtype)
    assert_bits_equal(round_trip(tensor), tensor)


@pytest.mark.parametrize("dtype, specials", [(torch.bfloat16, BF16_SPECIALS), (torch.float32, FP32_SPECIALS)])
def test_round_trip_of_zeros_subnormals_infinities_and_nan_payloads(dtype: torch.dtype, specials: list[int]) -> None:
    generator = torch.Generator().manual_seed(1)
    tensor = (0.02 * torch.randn(40, 31, generator=generator)).to(dtype)
    positions = torch.randperm(tensor.numel(), generator=generator)[:len(specials)]
    tensor.view(-1)[positions] = from_bits(specials, dtype)
    decoded = round_trip(tensor)
    assert_bits_equal(decoded, tensor)
    assert torch.equal(decoded.view(-1)[positions].view(BITS[dtype]), from_bits(specials, dtype).view(BITS[dtype]))


def test_every_bfloat16_bit_pattern_round_trips_though_most_are_escapes() -> None:
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    parts = encode(every)
    assert parts[ESCAPE_COLS].numel() == 256 * (256 - 15)  # 15 exponents of 256 in the table, each 256 times
    assert coded_bytes(parts) > every.numel() * 2  # not worth coding: the compressor stores such a tensor raw
    assert_bits_equal(decode_parts(parts, torch.bfloat16, (256, 256)), every)


def test_random_float32_bits_round_trip() -> None:
    bits = torch.randint(-2**31, 2**31 - 1, (37, 29), dtype=torch.int32, generator=torch.Generator().manual_seed(2))
    tensor = bits.view(torch.float32)
    assert_bits_equal(round_trip(tensor), tensor)


def test_a_tensor_of_only_escaped_rows_and_no_escapes_at_all() -> None:
    # 16 distinct exponents, one per row: row 15's exponent is the least common and escapes throughout
    rows = torch.stack([torch.full((9,), 2.0 ** (e - 8)) for e in range(16)])
    rows[15] = 2.0 ** -60  # the rarest: the one row that misses the table
    rows = torch.cat([rows[:15].repeat_interleave(2, dim=0), rows[15:]]).to(torch.bfloat16)
    parts = encode(rows)
    offsets = parts[ESCAPE_ROW_OFFSETS].tolist()
    assert offsets == [0] * 31 + [9]
    assert parts[ESCAPE_COLS].tolist() == list(range(9))
    assert_bits_equal(decode_parts(parts, torch.bfloat16, tuple(rows.shape)), rows)
    plain = torch.ones(4, 6, dtype=torch.bfloat16)
    assert encode(plain)[ESCAPE_COLS].numel() == 0
    assert_bits_equal(round_trip(plain), plain)


def test_byte_layout_is_the_documented_one() -> None:
    # bf16 bits: 1.0 = 0x3F80 (exp 127, mantissa 0); -1.5 = 0xBFC0 (sign, exp 127, mantissa 0x40); 0.5 = 0x3F00
    tensor = from_bits([0x3F80, 0xBFC0, 0x3F00, 0x3F80, 0x3F80], torch.bfloat16).reshape(1, 5)
    parts = encode(tensor)
    assert parts[EXPONENT_TABLE].tolist() == [127, 126] + [0] * 14  # most common first; 16 entries
    assert parts[SIGN_MANTISSA].tolist() == [[[0x00, 0xC0, 0x00, 0x00, 0x00]]]  # sign << 7 | mantissa
    # indexes 0,0,1,0,0 (+ a padding nibble): column 2j in the low nibble of byte j, 2j+1 in the high one
    assert parts[EXPONENT_INDEX].tolist() == [[0x00, 0x01, 0x00]]
    assert parts[ESCAPE_ROW_OFFSETS].tolist() == [0, 0]
    assert parts[ESCAPE_VALUES].dtype == torch.int16


def test_float32_sign_and_mantissa_fill_three_byte_planes() -> None:
    tensor = from_bits([0xC0123456], torch.float32).reshape(1, 1)  # sign 1, exp 0x80, mantissa 0x123456
    parts = encode(tensor)
    assert parts[SIGN_MANTISSA].reshape(-1).tolist() == [0x56, 0x34, 0x92]  # (1 << 23 | 0x123456), low byte first
    assert parts[EXPONENT_TABLE][0] == 0x80


def test_table_holds_the_fifteen_most_common_exponents_and_index_fifteen_escapes() -> None:
    histogram = torch.zeros(256, dtype=torch.int64)
    histogram[100:120] = torch.arange(20, 0, -1)  # exponent 100 most common ... 119 least
    histogram[50] = 20  # ties with 100: the smaller exponent first
    table, num_used = exponent_table(histogram)
    assert num_used == 15
    assert table.tolist() == [50, 100, *range(101, 114), 0]
    assert ESCAPE_INDEX == 15


def test_exponent_histogram_counts_biased_exponents() -> None:
    tensor = torch.tensor([1.0, 2.0, 2.5, -4.0, 0.0], dtype=torch.bfloat16)
    histogram = exponent_histogram(tensor)
    assert histogram[127] == 1 and histogram[128] == 2 and histogram[129] == 1 and histogram[0] == 1
    assert int(histogram.sum()) == 5


def test_float16_is_refused_with_the_reason_and_what_to_pass() -> None:
    with pytest.raises(UnsupportedWeightsDtypeError, match="no code for torch.float16.*--dtype float32.*--dtype bfloat16"):
        encode(torch.zeros(4, 4, dtype=torch.float16))

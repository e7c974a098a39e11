"""The kernels' in-memory ECF form (weights/planes.py): bit for bit round trips, the documented layout
read back independently of the decoder, exponent windows, escapes as whole groups, stacking."""

from __future__ import annotations

import pytest
import torch

from gpu_backend.weights import planes
from gpu_backend.weights.codec import encode
from gpu_backend.weights.packed import CompressedWeight

BF16 = torch.bfloat16


def _random(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.02 * torch.randn(rows, cols, generator=gen)).to(BF16)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16)


@pytest.mark.parametrize(("cols", "tile"), [(4096, 1024), (14336, 1024), (8192, 1024), (4060, 1024), (1536, 512),
                                            (896, 128), (192, 64), (2100, 64), (32, 32), (16, 16), (3, 16)])
def test_tile_widths_pad_little(cols: int, tile: int) -> None:
    assert planes.tile_cols(cols) == tile
    assert planes.padded_cols(cols) % tile == 0 and planes.padded_cols(cols) >= cols


def test_every_bfloat16_pattern_round_trips() -> None:
    everything = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(BF16).reshape(64, 1024)
    coded, base, escapes, num_escapes = planes.encode(everything)
    assert torch.equal(_bits(planes.decode(coded, base, escapes, 1024)), _bits(everything))
    assert num_escapes == 65536 - 15 * 2 * 128  # 15 exponents x 2 signs x 128 mantissas lie inside the window


@pytest.mark.parametrize(("rows", "cols"), [(40, 300), (24, 2100), (3, 65), (9, 4060), (1, 1), (5, 14336)])
def test_round_trip_with_rare_exponents(rows: int, cols: int) -> None:
    w = _random(rows, cols, rows + cols).float()
    w[0, 0], w[-1, -1], w[rows // 2, cols // 2] = 0.0, 2.0 ** 40, -(2.0 ** -100)
    w = w.to(BF16)
    coded, base, escapes, num_escapes = planes.encode(w)
    assert coded.shape == (3, rows, planes.padded_cols(cols) // planes.GROUP) and coded.dtype == torch.int32
    assert torch.equal(_bits(planes.decode(coded, base, escapes, cols)), _bits(w))
    assert escapes.shape[0] <= num_escapes <= 3 + (w.numel() // 1000)  # the planted ones and a few tails


def test_padding_columns_never_escape() -> None:
    w = torch.full((4, 300), 0.5, dtype=BF16)  # one exponent; 300 columns pad to 320
    _, _, escapes, num_escapes = planes.encode(w)
    assert num_escapes == 0 and escapes.shape == (0, 4)


def test_the_window_holds_the_most_weights() -> None:
    exponents = torch.tensor([3] * 5 + list(range(100, 115)) * 2 + [200] * 20, dtype=torch.uint8)
    assert planes.best_window(exponents) == 100  # 30 weights, against 20 for any window holding 200
    assert planes.best_window(torch.tensor([250, 251, 255], dtype=torch.uint8)) == 241  # the last window


def test_the_layout_as_documented() -> None:
    """Read the planes back with the module docstring's rules, not with planes.decode."""
    rows, cols = 3, 2048 + 512  # tile 512: G = 64
    w = _random(rows, cols, 7).float()
    w[1, 5] = 2.0 ** 30  # an escape: its group is (tile 0, g 5)
    w = w.to(BF16)
    coded, base, escapes, _ = planes.encode(w)
    tile, g_count = planes.tile_cols(cols), planes.tile_cols(cols) // 8
    assert tile == 512
    words = coded.long() & 0xFFFFFFFF
    bits = _bits(w).long() & 0xFFFF
    for r in range(rows):
        for group in (0, 5, 63, 64, 300):
            t, g = divmod(group, g_count)
            index_word = int(words[planes.INDEX, r, group])
            nibbles = [(index_word >> (8 * (j % 4) + 4 * (j // 4))) & 0xF for j in range(8)]
            columns = [t * tile + j * g_count + g for j in range(8)]
            if 15 in nibbles:
                entry = escapes[int(words[planes.LOW, r, group])].long() & 0xFFFFFFFF
                pairs = [(0, 2), (1, 3), (4, 6), (5, 7)]
                got = {}
                for word, (first, second) in zip(entry.tolist(), pairs, strict=True):
                    got[first], got[second] = word & 0xFFFF, word >> 16
                assert [got[j] for j in range(8)] == [int(bits[r, c]) for c in columns]
                continue
            for j, c in enumerate(columns):
                plane = planes.LOW if j < 4 else planes.HIGH
                top = (int(words[plane, r, group]) >> (8 * (j % 4))) & 0xFF
                exponent = int(base[r]) + nibbles[j]
                assert ((top & 0x80) << 8) | (exponent << 7) | (top & 0x7F) == int(bits[r, c]), (r, c)
    assert int(words[planes.LOW, 1, 5]) == 0 and escapes.shape[0] == 1  # the one escaped group, entry 0


def test_stacking_rebases_escape_entries_and_keeps_windows() -> None:
    upper, lower = _random(6, 300, 1).float(), 1e6 * _random(5, 300, 2).float()
    upper[2, 7], lower[4, 299] = 2.0 ** 50, 2.0 ** -50
    upper, lower = upper.to(BF16), lower.to(BF16)
    stacked = CompressedWeight.stack([CompressedWeight.from_dense(upper), CompressedWeight.from_dense(lower)])
    assert stacked.source_rows == (6, 5) and stacked.escapes.shape[0] >= 2
    assert stacked.exponent_base[0] != stacked.exponent_base[6]
    assert torch.equal(_bits(stacked.decode()), _bits(torch.cat([upper, lower])))


def test_from_file_parts_equals_from_dense() -> None:
    w = _random(33, 700, 3)
    a, b = CompressedWeight.from_parts(encode(w), BF16), CompressedWeight.from_dense(w)
    assert torch.equal(a.planes, b.planes) and torch.equal(a.escapes, b.escapes)


def test_only_bfloat16_is_held_coded() -> None:
    from gpu_backend.errors import UnsupportedWeightsDtypeError

    with pytest.raises(UnsupportedWeightsDtypeError, match="decode_at_load"):
        CompressedWeight.from_parts(encode(_random(4, 64, 0).float()), torch.float32)


def test_tiles_at_most_narrows_the_tiles_and_restores_them() -> None:
    from gpu_backend.weights import planes

    assert planes.tile_cols(4096) == 1024
    with pytest.raises(RuntimeError), planes.tiles_at_most(128):
        assert planes.tile_cols(4096) == 128 and planes.padded_cols(4060) == 4096
        raise RuntimeError("restored even so")
    assert planes.tile_cols(4096) == 1024 and planes.TILE_COLS[0] == 1024

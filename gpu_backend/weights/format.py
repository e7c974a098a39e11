"""The compressed-weights format's constants and its JSON header (docs/weights-format.md is the spec).

ECF ("exponent-coded floats") stores each weight of a matrix in a fixed number of bits: its sign and
mantissa as they are, its exponent as a 4-bit index into the tensor's 15 most common exponents, 15
meaning "escaped". Escaped weights are kept whole in a per-row side list. A safetensors file holds
the parts of every coded tensor under ``{name}#ecf.{part}`` and its header's metadata holds this
module's JSON under ``METADATA_KEY``: format name, version and each tensor's layout and checksums.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import (
    CompressedWeightsError,
    UnsupportedWeightsDtypeError,
    WeightsFormatVersionError,
)

FORMAT_NAME = "edgewise.ecf"
FORMAT_VERSION = 2  # what the compressor writes
READ_VERSIONS = (1, 2)  # 1: one checksum per part; 2: the planes checksummed per tile (a rank reads its slice)
METADATA_KEY = "edgewise.weights"
PART_SEPARATOR = "#ecf."
INDEX_BITS = 4
ESCAPE_INDEX = (1 << INDEX_BITS) - 1  # 15: the exponent is not in the table; see the escape list
TABLE_SIZE = 1 << INDEX_BITS  # 16 entries; entry 15 is never used, so a kernel may look up without a branch
EXPONENT_BITS = 8

# the parts of one coded tensor of shape (rows, *rest), cols = prod(rest)
SIGN_MANTISSA = "sign_mantissa"  # uint8 [bytes, rows, cols]: (sign << mantissa_bits | mantissa), byte 0 lowest
EXPONENT_INDEX = "exponent_index"  # uint8 [rows, ceil(cols / 2)]: column 2j in the low nibble, 2j+1 in the high
EXPONENT_TABLE = "exponent_table"  # uint8 [16]: the biased exponent each index stands for
ESCAPE_ROW_OFFSETS = "escape_row_offsets"  # int32 [rows + 1]: row r's escapes are [offsets[r], offsets[r+1])
ESCAPE_COLS = "escape_cols"  # int32 [num_escapes]: column of each escape, rows in order, columns ascending
ESCAPE_VALUES = "escape_values"  # int16 (bf16) / int32 (fp32) [num_escapes]: the weight's whole bit pattern
PARTS = (SIGN_MANTISSA, EXPONENT_INDEX, EXPONENT_TABLE, ESCAPE_ROW_OFFSETS, ESCAPE_COLS, ESCAPE_VALUES)
# version 2: which parts are checksummed whole, per tile of the weight grid, and per row block
WHOLE_PARTS = (EXPONENT_TABLE, ESCAPE_ROW_OFFSETS)
TILED_PARTS = (SIGN_MANTISSA, EXPONENT_INDEX)
ROW_BLOCK_PARTS = (ESCAPE_COLS, ESCAPE_VALUES)

CODED = "ecf"
RAW = "raw"


@dataclass(frozen=True)
class FloatLayout:
    """Where a float dtype keeps its sign, exponent and mantissa, and the integer type of its bits."""

    dtype: torch.dtype
    bits_dtype: torch.dtype
    mantissa_bits: int

    @property
    def total_bits(self) -> int:
        return 1 + EXPONENT_BITS + self.mantissa_bits

    @property
    def sign_mantissa_bytes(self) -> int:
        return (1 + self.mantissa_bits) // 8

    @property
    def coded_bits(self) -> int:
        """Bits per weight before escapes and row offsets: 12 for bfloat16, 28 for float32."""
        return 1 + INDEX_BITS + self.mantissa_bits


# Only dtypes whose sign + mantissa fill whole bytes: float16 (1 + 10 bits) would save 1 bit in 16.
LAYOUTS: dict[torch.dtype, FloatLayout] = {
    torch.bfloat16: FloatLayout(torch.bfloat16, torch.int16, 7),
    torch.float32: FloatLayout(torch.float32, torch.int32, 23),
}
DTYPE_NAMES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def layout_of(dtype: torch.dtype) -> FloatLayout:
    try:
        return LAYOUTS[dtype]
    except KeyError:
        why = (" (float16 keeps only 5 exponent bits and its sign and mantissa do not fill whole bytes, so a "
               "fixed-rate code would save 1 bit in 16)" if dtype == torch.float16 else "")
        raise UnsupportedWeightsDtypeError(
            f"the compressed-weights format has no code for {dtype}{why}; it codes bfloat16 and float32: pass "
            "--dtype float32 (lossless from float16 and bfloat16) or --dtype bfloat16 (lossless only for "
            "weights that were bfloat16)"
        ) from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) a coded tensor is stored as: its first dimension by the product of the others."""
    return shape[0], math.prod(shape[1:])


def part_name(tensor_name: str, part: str) -> str:
    return f"{tensor_name}{PART_SEPARATOR}{part}"


def source_name(stored_name: str) -> str:
    """The checkpoint tensor a stored tensor belongs to: ``a.weight#ecf.exponent_index`` -> ``a.weight``."""
    return stored_name.split(PART_SEPARATOR, 1)[0]


@dataclass(frozen=True)
class TileGrid:
    """The checksum grid of a version-2 coded tensor: ``tile_rows`` x ``tile_cols`` tiles, row-major, the
    last row and column of tiles cut short by the matrix's edge. ``tile_cols`` is even, so a tile's
    columns are whole bytes of the nibble plane."""

    rows: int
    cols: int
    tile_rows: int
    tile_cols: int

    @property
    def num_row_blocks(self) -> int:
        return -(-self.rows // self.tile_rows)

    @property
    def num_col_blocks(self) -> int:
        return -(-self.cols // self.tile_cols)

    def row_bounds(self, block: int) -> tuple[int, int]:
        return block * self.tile_rows, min((block + 1) * self.tile_rows, self.rows)

    def col_bounds(self, block: int) -> tuple[int, int]:
        return block * self.tile_cols, min((block + 1) * self.tile_cols, self.cols)

    def row_blocks(self, start: int, stop: int) -> range:
        """The row blocks that cover rows ``start..stop-1`` (none for an empty range)."""
        return range(start // self.tile_rows, -(-stop // self.tile_rows)) if stop > start else range(0)

    def col_blocks(self, start: int, stop: int) -> range:
        return range(start // self.tile_cols, -(-stop // self.tile_cols)) if stop > start else range(0)

    def num_checksums(self, part: str) -> int:
        """How many checksums the header lists for a tiled or row-blocked part."""
        return self.num_row_blocks * (self.num_col_blocks if part in TILED_PARTS else 1)


@dataclass(frozen=True)
class TensorEntry:
    """One checkpoint tensor in a file: how it is stored and the checksums to check it by."""

    encoding: str  # CODED or RAW
    dtype: str  # the checkpoint dtype it decodes to ("bfloat16")
    shape: tuple[int, ...]
    crc32: int  # of the decoded tensor's bytes (for RAW: of the stored tensor, the same bytes)
    # CODED: each part's checksum; version 1 lists every part here, version 2 only WHOLE_PARTS
    part_crc32: dict[str, int] = field(default_factory=dict)
    # CODED, version 2: (tile_rows, tile_cols), and per TILED_PARTS part a checksum per tile (row-major),
    # per ROW_BLOCK_PARTS part one per row block of tile_rows rows
    tile_shape: tuple[int, int] | None = None
    tile_crc32: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_NAMES.get(self.dtype) or getattr(torch, self.dtype)

    @property
    def tiled(self) -> bool:
        """Whether the planes are checksummed per tile (version 2), so a slice can be read and checked alone."""
        return self.tile_shape is not None

    def grid(self) -> TileGrid:
        """The checksum grid (version-2 coded tensors only)."""
        if self.tile_shape is None:
            raise CompressedWeightsError("a version-1 tensor has no tile grid: its parts are checksummed whole")
        return TileGrid(*matrix_shape(self.shape), *self.tile_shape)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"encoding": self.encoding, "dtype": self.dtype, "shape": list(self.shape),
                               "crc32": self.crc32}
        if self.encoding == CODED:
            raw["parts"] = dict(self.part_crc32)
        if self.tile_shape is not None:
            raw["tiles"] = {"shape": list(self.tile_shape), **{k: list(v) for k, v in self.tile_crc32.items()}}
        return raw

    @classmethod
    def from_json(cls, name: str, raw: dict[str, Any], version: int = FORMAT_VERSION) -> TensorEntry:
        try:
            tiles = raw.get("tiles") if version >= 2 else None
            entry = cls(encoding=raw["encoding"], dtype=raw["dtype"], shape=tuple(int(d) for d in raw["shape"]),
                        crc32=int(raw["crc32"]), part_crc32={k: int(v) for k, v in raw.get("parts", {}).items()},
                        tile_shape=None if tiles is None else (int(tiles["shape"][0]), int(tiles["shape"][1])),
                        tile_crc32={} if tiles is None else {k: tuple(int(c) for c in v) for k, v in tiles.items()
                                                             if k != "shape"})
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise CompressedWeightsError(f"tensor {name!r}: malformed header entry ({error!r})") from None
        if entry.encoding not in (CODED, RAW):
            raise CompressedWeightsError(f"tensor {name!r}: unknown encoding {entry.encoding!r}")
        if entry.encoding == CODED:
            entry._check_checksum_lists(name, version)
        return entry

    def _check_checksum_lists(self, name: str, version: int) -> None:
        whole = PARTS if version == 1 else WHOLE_PARTS
        if set(self.part_crc32) != set(whole):
            raise CompressedWeightsError(f"tensor {name!r}: header lists parts {sorted(self.part_crc32)}, "
                                         f"expected {sorted(whole)}")
        if version == 1:
            return
        if self.tile_shape is None or set(self.tile_crc32) != set(TILED_PARTS + ROW_BLOCK_PARTS):
            raise CompressedWeightsError(f"tensor {name!r}: header lists tile checksums for "
                                         f"{sorted(self.tile_crc32)}, expected {sorted(TILED_PARTS + ROW_BLOCK_PARTS)}")
        tile_rows, tile_cols = self.tile_shape
        if tile_rows < 1 or tile_cols < 2 or tile_cols % 2:
            raise CompressedWeightsError(f"tensor {name!r}: tile shape {list(self.tile_shape)} is not positive rows "
                                         "by an even number of columns")


@dataclass(frozen=True)
class FileHeader:
    """The JSON kept in a compressed file's safetensors metadata under ``METADATA_KEY``."""

    tensors: dict[str, TensorEntry]
    version: int = FORMAT_VERSION

    def to_metadata(self) -> dict[str, str]:
        body = {"format": FORMAT_NAME, "version": self.version,
                "tensors": {name: entry.to_json() for name, entry in self.tensors.items()}}
        return {"format": "pt", METADATA_KEY: json.dumps(body, separators=(",", ":"))}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str] | None, file: str) -> FileHeader | None:
        """The header of a compressed file; None for a plain safetensors file."""
        text = (metadata or {}).get(METADATA_KEY)
        if text is None:
            return None
        try:
            body = json.loads(text)
            name, version, tensors = body["format"], body["version"], body["tensors"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CompressedWeightsError(f"{file}: malformed {METADATA_KEY} header ({error!r})") from None
        if name != FORMAT_NAME:
            raise CompressedWeightsError(f"{file}: weights format {name!r} is not {FORMAT_NAME!r}")
        if version not in READ_VERSIONS:
            raise WeightsFormatVersionError(
                f"{file}: written in {FORMAT_NAME} version {version}, but this edgewise reads versions "
                f"{' and '.join(map(str, READ_VERSIONS))} only (compress the original checkpoint again with this "
                "version, or upgrade)")
        return cls({name: TensorEntry.from_json(name, raw, version) for name, raw in tensors.items()}, version)

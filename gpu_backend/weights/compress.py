"""Writing a checkpoint folder's weights in ECF: the folder-level half of ``edgewise weights compress``.

Everything is written into a hidden temporary folder beside the destination, which is renamed to it
only once every file is complete, so an interrupted run never leaves a folder that looks like a
checkpoint. Each coded tensor is decoded again in memory and compared before it is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..byte_progress import Advance, byte_progress
from ..errors import CheckpointError, CompressedWeightsError
from .codec import Parts, coded_bytes, crc32, decode_parts, encode, encode_on_device
from .format import (
    CODED,
    ESCAPE_COLS,
    RAW,
    WHOLE_PARTS,
    FileHeader,
    TensorEntry,
    TileGrid,
    dtype_name,
    layout_of,
    matrix_shape,
    part_name,
)
from .reader import tile_checksums

INDEX_FILE = "model.safetensors.index.json"
MIN_CODED_ELEMENTS = 4096  # below this a tensor is a norm, a bias or a tiny table: kept as it is
# checksum tiles (docs/weights-format.md, "Checksums"): up to MAX_TILE_BLOCKS row blocks by as many column blocks
# (a tensor-parallel rank of up to 8 reads its slice's tiles only), none smaller than MIN_TILE_WEIGHTS weights
MAX_TILE_BLOCKS = 8
MIN_TILE_WEIGHTS = 8192
_WEIGHT_PATTERNS = ("*.safetensors", INDEX_FILE, "pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


@dataclass(frozen=True)
class CompressSummary:
    """What one compression wrote: sizes in bytes of the weight files' tensor data, and counts."""

    source_bytes: int = 0  # the tensors as stored in SRC (before any --dtype cast)
    cast_bytes: int = 0  # the same tensors in the chosen dtype: what "lossless" and the ratio refer to
    written_bytes: int = 0  # the tensors as stored in DST
    num_coded: int = 0
    num_raw: int = 0
    num_coded_weights: int = 0
    num_escapes: int = 0

    @property
    def ratio(self) -> float:
        return self.written_bytes / self.cast_bytes

    def __add__(self, other: CompressSummary) -> CompressSummary:
        return CompressSummary(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def compress_checkpoint(src: Path, dst: Path, files: Sequence[Path], *, dtype: torch.dtype | None = None,
                        progress: bool = True) -> CompressSummary:
    """Write ``src`` (whose weights are ``files``) to the new folder ``dst`` with ECF-coded weights.

    ``dtype`` casts every floating tensor first; the result is lossless with respect to it.
    """
    src, dst = Path(src), Path(dst)
    if dtype is not None:
        layout_of(dtype)  # an unsupported dtype fails before anything is written
    if dst.exists():
        raise CheckpointError(f"{dst} already exists; pass a new folder to write the compressed checkpoint to")
    if dst.resolve().is_relative_to(src.resolve()):
        raise CheckpointError(f"{dst} is inside {src}; pass a folder outside the checkpoint being compressed")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns(*_WEIGHT_PATTERNS), dirs_exist_ok=True)
        if dtype is not None:
            _set_config_dtype(staging / "config.json", dtype)
        total = sum(f.stat().st_size for f in files)
        with byte_progress("Compressing weights", total, progress and sys.stderr.isatty()) as advance:
            summary = sum((_compress_file(file, staging / file.name, dtype, advance) for file in files),
                          CompressSummary())
        if (src / INDEX_FILE).is_file():
            _write_index(staging, files)
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the folder from other users
        os.rename(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _compress_file(file: Path, out: Path, dtype: torch.dtype | None, advance: Advance) -> CompressSummary:
    def cast() -> Iterator[tuple[str, torch.Tensor, int]]:
        for name, source in _read_tensors(file):
            advance(_nbytes(source))
            yield name, source.to(dtype) if dtype is not None and source.is_floating_point() else source, _nbytes(source)

    return _write_file(cast(), out)


def compress_tensors(tensors: Iterable[tuple[str, torch.Tensor]], out: Path) -> CompressSummary:
    """Write named tensors as one ECF weights file ``out``, as ``compress_checkpoint`` writes each file:
    for weights made in memory (a benchmark's random model) that are never saved dense."""
    return _write_file(((name, tensor, _nbytes(tensor)) for name, tensor in tensors), Path(out))


def _write_file(tensors: Iterable[tuple[str, torch.Tensor, int]], out: Path) -> CompressSummary:
    stored: dict[str, torch.Tensor] = {}
    entries: dict[str, TensorEntry] = {}
    summary = CompressSummary()
    for name, tensor, source_bytes in tensors:
        entries[name], parts = _store(name, tensor)
        stored.update(parts)
        coded = entries[name].encoding == CODED
        summary += CompressSummary(
            source_bytes=source_bytes, cast_bytes=_nbytes(tensor), written_bytes=sum(map(_nbytes, parts.values())),
            num_coded=int(coded), num_raw=int(not coded), num_coded_weights=tensor.numel() if coded else 0,
            num_escapes=parts[part_name(name, ESCAPE_COLS)].numel() if coded else 0)
    save_file(stored, str(out), metadata=FileHeader(entries).to_metadata())
    return summary


def _store(name: str, tensor: torch.Tensor) -> tuple[TensorEntry, dict[str, torch.Tensor]]:
    """How ``tensor`` is stored: its entry in the header and the tensors under their stored names.

    A tensor on a GPU (a benchmark's random weights) is coded and checked there, then brought to the host."""
    checked_on_device = tensor.device.type != "cpu"
    parts = None
    if is_worth_coding(tensor):
        parts = _coded_on_device(name, tensor) if checked_on_device else encode(tensor)
    tensor = tensor.cpu()
    if parts is None or coded_bytes(parts) >= _nbytes(tensor):  # a code no smaller than the bytes is no gain
        return TensorEntry(RAW, dtype_name(tensor.dtype), tuple(tensor.shape), crc32(tensor)), {name: tensor}
    stored = {part_name(name, part): value for part, value in parts.items()}
    return _coded_entry(name, tensor, parts, decodes_to_itself=checked_on_device), stored


def _coded_on_device(name: str, tensor: torch.Tensor) -> Parts:
    """``encode_on_device``'s parts, checked on the tensor's device to decode to it bit for bit, then
    copied to the host."""
    parts = encode_on_device(tensor)
    bits = layout_of(tensor.dtype).bits_dtype
    decoded = decode_parts(parts, tensor.dtype, tuple(tensor.shape))
    if not torch.equal(decoded.view(bits), tensor.contiguous().view(bits)):
        raise _not_itself(name)
    return {part: value.cpu() for part, value in parts.items()}


def _not_itself(name: str) -> CompressedWeightsError:
    return CompressedWeightsError(f"tensor {name!r} does not decode to itself; nothing was written (a bug: "
                                  "please report it with the checkpoint)")


def is_worth_coding(tensor: torch.Tensor) -> bool:
    """Matrices (and larger) of bfloat16/float32 weights big enough to gain; 1-D norms and biases are not."""
    if not tensor.is_floating_point() or tensor.dim() < 2 or tensor.numel() < MIN_CODED_ELEMENTS:
        return False
    layout_of(tensor.dtype)  # a float16 matrix fails here: --dtype must choose a codable dtype
    return True


def _coded_entry(name: str, tensor: torch.Tensor, parts: Parts, decodes_to_itself: bool = False) -> TensorEntry:
    """``decodes_to_itself``: already checked (on the device that coded it)."""
    expected = crc32(tensor)
    if not decodes_to_itself and crc32(decode_parts(parts, tensor.dtype, tuple(tensor.shape))) != expected:
        raise _not_itself(name)
    grid = TileGrid(*matrix_shape(tuple(tensor.shape)), *tile_shape(*matrix_shape(tuple(tensor.shape))))
    return TensorEntry(CODED, dtype_name(tensor.dtype), tuple(tensor.shape), expected,
                       {part: crc32(parts[part]) for part in WHOLE_PARTS}, (grid.tile_rows, grid.tile_cols),
                       tile_checksums(parts, grid))


def tile_shape(rows: int, cols: int) -> tuple[int, int]:
    """(tile rows, tile columns) of a coded matrix's checksum grid: its rows and its columns split into equal
    blocks, a power of two of them up to ``MAX_TILE_BLOCKS`` each (rows and columns in turn), so that a
    tensor-parallel rank's rows or columns at 2, 4 or 8 ranks are whole blocks; blocks of columns stay even
    (whole bytes of the nibble plane); no tile smaller than ``MIN_TILE_WEIGHTS`` weights."""
    row_blocks, col_blocks = 1, 1
    grown = True
    while grown:
        grown = False
        if row_blocks < MAX_TILE_BLOCKS and rows % (2 * row_blocks) == 0 and \
                rows // (2 * row_blocks) * (cols // col_blocks) >= MIN_TILE_WEIGHTS:
            row_blocks, grown = 2 * row_blocks, True
        if col_blocks < MAX_TILE_BLOCKS and cols % (4 * col_blocks) == 0 and \
                rows // row_blocks * (cols // (2 * col_blocks)) >= MIN_TILE_WEIGHTS:
            col_blocks, grown = 2 * col_blocks, True
    return rows // row_blocks, max(2, cols // col_blocks + (cols // col_blocks) % 2)


def _read_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            if FileHeader.from_metadata(handle.metadata(), str(file)) is not None:
                raise CheckpointError(f"{file} is already compressed; pass the original checkpoint")
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name)
    except SafetensorError as error:
        raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _set_config_dtype(config: Path, dtype: torch.dtype) -> None:
    """config.json names the dtype the weights now decode to (``dtype`` or ``torch_dtype``, as written)."""
    if not config.is_file():
        return
    raw: dict[str, Any] = json.loads(config.read_text(encoding="utf-8"))
    keys = [key for key in ("dtype", "torch_dtype") if key in raw] or ["torch_dtype"]
    raw.update({key: dtype_name(dtype) for key in keys})
    config.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


def _write_index(folder: Path, files: Sequence[Path]) -> None:
    weight_map: dict[str, str] = {}
    for file in files:
        with safe_open(folder / file.name, framework="pt", device="cpu") as handle:
            weight_map.update({name: file.name for name in handle.keys()})  # noqa: SIM118
    index = {"metadata": {"total_size": sum((folder / f.name).stat().st_size for f in files)},
             "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")



"""Opening a weights file whichever way it is stored: plain safetensors, or ECF-compressed.

``open_weights(file)`` gives the handle the loaders already use (``keys``, ``get_slice``,
``get_tensor``); for a compressed file the names are the checkpoint's own and each tensor is checked
against its checksums and decoded to its dense dtype on the CPU when first indexed.

For in-kernel decoding a linear layer takes ``CompressedSlice.coded_parts()`` (verified, still coded;
through ``CheckpointTensor.coded_parts``) instead of indexing the slice, keeps its own rows or
columns of them (weights/packed.py), and its GEMV/GEMM decodes tiles (kernels/triton_linear.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import CompressedWeightsError, WeightsChecksumError
from .codec import Parts, crc32, decode_parts
from .format import (
    CODED,
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

# safetensors' dtype names, which CheckpointTensor reads from get_slice(...).get_dtype()
_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float32: "F32"}
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
    """One checkpoint tensor of a compressed file, shaped like safetensors' PySafeSlice."""

    def __init__(self, handle: Any, name: str, entry: TensorEntry, file: Path,
                 decode_device: torch.device = CPU) -> None:
        self._handle = handle
        self.name = name
        self.entry = entry
        self.file = file
        self.decode_device = decode_device
        self._decoded: torch.Tensor | None = None

    def get_shape(self) -> list[int]:
        return list(self.entry.shape)

    def get_dtype(self) -> str:
        if self.entry.encoding != CODED:
            return self._handle.get_slice(self.name).get_dtype()
        return _SAFETENSORS_DTYPES[self.entry.torch_dtype]

    def __getitem__(self, index: Any) -> torch.Tensor:
        if self._decoded is None:
            self._decoded = self._read_checked()
        return self._decoded[index]

    def coded_parts(self, dtype: torch.dtype) -> Parts | None:
        """``parts()`` when the tensor is coded and decodes to ``dtype``; else None."""
        return self.parts() if self.entry.encoding == CODED and self.entry.torch_dtype == dtype else None

    def parts(self) -> Parts:
        """The coded parts, each checked against its checksum (CODED tensors only)."""
        parts = {part: self._handle.get_tensor(part_name(self.name, part)) for part in PARTS}
        for part, tensor in parts.items():
            self._check(f"stored part {part!r}", crc32(tensor), self.entry.part_crc32[part])
        check_parts(self.name, parts, self.entry)
        return parts

    def _read_checked(self) -> torch.Tensor:
        if self.entry.encoding == CODED:
            parts = {part: value.to(self.decode_device) for part, value in self.parts().items()}
            tensor = decode_parts(parts, self.entry.torch_dtype, self.entry.shape)
            if tensor.device.type == "cpu":  # on a GPU the parts' checksums stand for it: no copy back
                self._check("decoded tensor", crc32(tensor), self.entry.crc32)
        else:
            tensor = self._handle.get_tensor(self.name)
            self._check("stored tensor", crc32(tensor), self.entry.crc32)
        return tensor

    def _check(self, what: str, computed: int, expected: int) -> None:
        if computed != expected:
            raise WeightsChecksumError(
                f"{self.file}: tensor {self.name!r}: {what} has crc32 {computed:08x} but the header says "
                f"{expected:08x}; the file is corrupted (compress the original checkpoint again)")


def check_parts(name: str, parts: Parts, entry: TensorEntry) -> None:
    """The parts have the shapes and dtypes the header's shape and dtype imply."""
    layout = layout_of(entry.torch_dtype)
    rows, cols = matrix_shape(entry.shape)
    num_escapes = parts[ESCAPE_COLS].numel()
    expected = {
        SIGN_MANTISSA: ((layout.sign_mantissa_bytes, rows, cols), torch.uint8),
        EXPONENT_INDEX: ((rows, (cols + 1) // 2), torch.uint8),
        EXPONENT_TABLE: ((TABLE_SIZE,), torch.uint8),
        ESCAPE_ROW_OFFSETS: ((rows + 1,), torch.int32),
        ESCAPE_COLS: ((num_escapes,), torch.int32),
        ESCAPE_VALUES: ((num_escapes,), layout.bits_dtype),
    }
    for part, (shape, dtype) in expected.items():
        if tuple(parts[part].shape) != shape or parts[part].dtype != dtype:
            raise CompressedWeightsError(f"tensor {name!r}: part {part!r} is {parts[part].dtype} "
                                         f"{tuple(parts[part].shape)}, expected {dtype} {shape}")
    offsets = parts[ESCAPE_ROW_OFFSETS]
    if offsets[0] != 0 or offsets[-1] != num_escapes or bool((offsets.diff() < 0).any()):
        raise CompressedWeightsError(f"tensor {name!r}: escape row offsets do not run 0..{num_escapes}")
    if num_escapes and not bool(((parts[ESCAPE_COLS] >= 0) & (parts[ESCAPE_COLS] < cols)).all()):
        raise CompressedWeightsError(f"tensor {name!r}: an escape column lies outside 0..{cols - 1}")

"""A checkpoint tensor that is read only when, and only as far as, a weight loader asks for it.

The loader hands each ``weight_loader`` a ``CheckpointTensor`` instead of the whole tensor, so a
tensor-parallel rank copies just its own slice out of the safetensors file. ``narrow`` and
``materialize`` accept a plain ``torch.Tensor`` too, so layers load the same way from either.
"""

from __future__ import annotations

from typing import Any

import torch
from safetensors import SafetensorError

from .errors import CheckpointError

# safetensors' dtype names (the header's "dtype" field) -> torch dtypes
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}


class CheckpointTensor:
    """One tensor of an open safetensors file, converted on read as the loader always did.

    Floating tensors come back in the model's ``dtype``, others keep their own; every read lands on
    ``device``. ``bytes_read`` counts the file bytes copied so far (of a compressed file: the coded
    bytes its reader read). Valid only while the file is open.
    """

    def __init__(self, name: str, stored: Any, *, dtype: torch.dtype, device: torch.device) -> None:
        self.name = name
        self._stored = stored  # safetensors' PySafeSlice: indexing it copies only the indexed part
        self.shape = torch.Size(stored.get_shape())
        self.stored_dtype = _torch_dtype(name, stored.get_dtype())
        self.dtype = dtype if self.stored_dtype.is_floating_point else self.stored_dtype
        self.device = device
        self.bytes_read = 0

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        """``tensor.narrow(dim, start, length)``, reading only those elements from the file."""
        check_range(self.shape, dim, start, length)
        return self._read((slice(None),) * dim + (slice(start, start + length),))

    def read(self) -> torch.Tensor:
        """The whole tensor (replicated parameters)."""
        return self._read((Ellipsis,))

    def coded_parts(self, along: tuple[int, int, int] | None = None) -> dict[str, torch.Tensor] | None:
        """The tensor's ECF parts on the CPU, checked against their checksums, when the file stores it
        coded in the dtype it loads in; else None (docs/weights-format.md). With ``along`` = (dim, start,
        length), the parts of that slice only (rows, or columns from an even start; None from an odd one),
        cut as weights/packed.py's ``slice_rows``/``slice_cols`` cut the whole parts: a version-2 file
        reads just the tiles that cover it."""
        parts_of = getattr(self._stored, "coded_parts", None)
        if parts_of is None:
            return None
        if along is not None:
            check_range(self.shape, *along)
        before = self._stored.bytes_read
        parts = parts_of(self.dtype) if along is None else parts_of(self.dtype, along)
        self.bytes_read += self._stored.bytes_read - before
        return parts

    def _read(self, index: tuple[Any, ...]) -> torch.Tensor:
        before = getattr(self._stored, "bytes_read", None)  # a compressed file counts the bytes it reads
        try:
            raw = self._stored[index]
        except SafetensorError as error:
            raise CheckpointError(f"tensor {self.name!r} could not be read: {error}") from None
        self.bytes_read += raw.numel() * raw.element_size() if before is None else self._stored.bytes_read - before
        return raw.to(device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"CheckpointTensor({self.name!r}, shape={tuple(self.shape)}, stored_dtype={self.stored_dtype})"


Loaded = torch.Tensor | CheckpointTensor


def narrow(loaded: Loaded, dim: int, start: int, length: int) -> torch.Tensor:
    """``loaded.narrow(dim, start, length)`` as a tensor; from a checkpoint only that slice is read."""
    check_range(loaded.shape, dim, start, length)
    return loaded.narrow(dim, start, length)


def materialize(loaded: Loaded) -> torch.Tensor:
    """The whole of ``loaded`` as a tensor (read from the file for a ``CheckpointTensor``)."""
    return loaded.read() if isinstance(loaded, CheckpointTensor) else loaded


def check_range(shape: torch.Size, dim: int, start: int, length: int) -> None:
    # safetensors clamps an index past the end the way Python slicing does: check, never load short
    if dim >= len(shape) or start < 0 or length < 0 or start + length > shape[dim]:
        raise CheckpointError(f"checkpoint shape {tuple(shape)} has no rows {start}..{start + length} "
                              f"along dimension {dim} (config.json does not match the weights?)")


def _torch_dtype(name: str, stored: str) -> torch.dtype:
    try:
        return _DTYPES[stored]
    except KeyError:
        raise CheckpointError(f"tensor {name!r} has dtype {stored}, which the loader does not read") from None

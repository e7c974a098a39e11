"""Helpers for the compressed-weights tests: compress a folder, compare two folders tensor by tensor, poke files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gpu_backend.loader import weight_files
from gpu_backend.weights import CompressSummary, compress_checkpoint, open_weights
from gpu_backend.weights.codec import crc32
from gpu_backend.weights.format import CODED, METADATA_KEY, PARTS, part_name

BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}


def compress(src: Path, dst: Path, dtype: torch.dtype | None = None) -> CompressSummary:
    return compress_checkpoint(src, dst, weight_files(src), dtype=dtype, progress=False)


def compressed_shakespeare(root: Path) -> tuple[Path, Path]:
    """The shipped tiny-shakespeare (bfloat16) and its compressed copy under ``root``."""
    from gpu_backend.builtin_models import builtin_model_path

    src = builtin_model_path("@cf/edgewise/tiny-shakespeare")
    compress(src, root / "shakespeare-ecf")
    return src, root / "shakespeare-ecf"


def source_tensors(folder: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a plain checkpoint, floating ones cast to ``dtype`` as compress does."""
    tensors = {}
    for file in weight_files(folder):
        with safe_open(file, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118
                tensor = handle.get_tensor(name)
                tensors[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return tensors


def decoded_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in weight_files(folder):
        with open_weights(file) as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return tensors


def assert_bit_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        got = actual[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        bits = BITS[tensor.element_size()]
        assert torch.equal(got.contiguous().view(bits), tensor.contiguous().view(bits)), name


def stored_range(file: Path, stored_name: str) -> tuple[int, int]:
    """Byte range of one stored tensor in a safetensors file."""
    with open(file, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
    start, end = header[stored_name]["data_offsets"]
    return 8 + header_len + start, 8 + header_len + end


def flip_byte(file: Path, offset: int) -> None:
    with open(file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x01]))


def rewrite_header(file: Path, **changes: object) -> None:
    """Save ``file`` again with its ECF header's top-level fields changed (e.g. version=2)."""
    with safe_open(file, framework="pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    body = json.loads(metadata[METADATA_KEY])
    body.update(changes)
    save_file(tensors, str(file), metadata={**metadata, METADATA_KEY: json.dumps(body)})


def as_version_1(folder: Path) -> None:
    """Rewrite a compressed folder's files as ECF version 1 wrote them: one checksum per part, no tiles."""
    for file in weight_files(folder):
        with safe_open(file, framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata()
        body = json.loads(metadata[METADATA_KEY])
        for name, entry in body["tensors"].items():
            if entry["encoding"] == CODED:
                entry["parts"] = {part: crc32(tensors[part_name(name, part)]) for part in PARTS}
                del entry["tiles"]
        body["version"] = 1
        save_file(tensors, str(file), metadata={**metadata, METADATA_KEY: json.dumps(body, separators=(",", ":"))})

"""Reading compressed files: plain files pass through; corruption names the tensor; a foreign version names both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compressed_checkpoints import compress, flip_byte, rewrite_header, stored_range
from safetensors import safe_open
from safetensors.torch import save_file

from gpu_backend import LLM
from gpu_backend.errors import (
    CheckpointError,
    CompressedWeightsError,
    WeightsChecksumError,
    WeightsFormatVersionError,
)
from gpu_backend.weights import open_weights
from gpu_backend.weights.format import FORMAT_VERSION, METADATA_KEY, READ_VERSIONS, part_name

WEIGHT = "model.layers.0.mlp.up_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"


@pytest.fixture
def compressed(checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    compress(checkpoints["llama"], tmp_path / "out")
    return tmp_path / "out"


def test_a_plain_file_opens_as_safetensors_does(checkpoints: dict[str, Path]) -> None:
    file = checkpoints["llama"] / "model.safetensors"
    with open_weights(file) as ours, safe_open(file, framework="pt") as theirs:
        assert list(ours.keys()) == list(theirs.keys())
        assert torch.equal(ours.get_tensor(WEIGHT), theirs.get_tensor(WEIGHT))


def test_a_slice_reads_like_safetensors_slices(compressed: Path, checkpoints: dict[str, Path]) -> None:
    with open_weights(compressed / "model.safetensors") as ours, \
            safe_open(checkpoints["llama"] / "model.safetensors", framework="pt") as theirs:
        slice_ = ours.get_slice(WEIGHT)
        assert slice_.get_shape() == theirs.get_slice(WEIGHT).get_shape()
        assert slice_.get_dtype() == "F32"
        assert torch.equal(slice_[3:7, 10:20], theirs.get_slice(WEIGHT)[3:7, 10:20])
        assert ours.get_slice(NORM).get_dtype() == "F32"


@pytest.mark.parametrize("part", ["sign_mantissa", "exponent_index", "escape_row_offsets"])
def test_a_flipped_bit_in_a_coded_tensor_names_the_tensor(compressed: Path, part: str) -> None:
    file = compressed / "model.safetensors"
    start, end = stored_range(file, part_name(WEIGHT, part))
    flip_byte(file, (start + end) // 2)
    with open_weights(file) as handle:
        # version 2 names the tile (the planes) or the row block (escape lists); whole parts are named alone
        with pytest.raises(WeightsChecksumError, match=f"tensor '{WEIGHT}': stored part '{part}'(, .*,)? has crc32"):
            handle.get_tensor(WEIGHT)
        handle.get_tensor("model.layers.1.mlp.up_proj.weight")  # the others still read


def test_a_flipped_bit_in_a_raw_tensor_names_it_and_the_engine_refuses_to_load(compressed: Path) -> None:
    file = compressed / "model.safetensors"
    start, _ = stored_range(file, NORM)
    flip_byte(file, start)
    with open_weights(file) as handle, pytest.raises(WeightsChecksumError, match=f"tensor '{NORM}': stored tensor"):
        handle.get_tensor(NORM)
    with pytest.raises(CheckpointError, match=f"{NORM}.*corrupted"):
        LLM(str(compressed), device="cpu", dtype="float32", progress=False)


def test_a_version_this_code_does_not_read_names_both_versions(compressed: Path) -> None:
    rewrite_header(compressed / "model.safetensors", version=FORMAT_VERSION + 1)
    assert READ_VERSIONS == (1, FORMAT_VERSION)
    expected = f"version {FORMAT_VERSION + 1}, but this edgewise reads versions 1 and {FORMAT_VERSION} only"
    with pytest.raises(WeightsFormatVersionError, match=expected), open_weights(compressed / "model.safetensors"):
        pass
    with pytest.raises(CheckpointError, match=expected):
        LLM(str(compressed), device="cpu", dtype="float32", progress=False)


def test_another_format_name_and_a_malformed_header_are_refused(compressed: Path) -> None:
    rewrite_header(compressed / "model.safetensors", format="someone.else")
    with pytest.raises(CompressedWeightsError, match="'someone.else' is not 'edgewise.ecf'"), \
            open_weights(compressed / "model.safetensors"):
        pass


def test_a_missing_part_a_stray_tensor_and_a_part_of_the_wrong_shape_are_named(compressed: Path, tmp_path: Path) -> None:
    file = compressed / "model.safetensors"
    with safe_open(file, framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        metadata = handle.metadata()
    missing = dict(tensors)
    del missing[part_name(WEIGHT, "escape_cols")]
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(CompressedWeightsError, match=f"'{WEIGHT}' is missing its stored part"), \
            open_weights(tmp_path / "missing.safetensors"):
        pass
    save_file({**tensors, "stray.weight": torch.zeros(2)}, str(tmp_path / "stray.safetensors"), metadata=metadata)
    with pytest.raises(CompressedWeightsError, match="stored tensor 'stray.weight' is not in the"), \
            open_weights(tmp_path / "stray.safetensors"):
        pass
    body = json.loads(metadata[METADATA_KEY])
    body["tensors"][WEIGHT]["shape"][0] += 1  # the header disagrees with the parts
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata={**metadata, METADATA_KEY: json.dumps(body)})
    with open_weights(tmp_path / "shape.safetensors") as handle, \
            pytest.raises(CompressedWeightsError, match=f"tensor '{WEIGHT}': part 'sign_mantissa' is"):
        handle.get_tensor(WEIGHT)

"""compress_checkpoint: every tensor of every test and shipped checkpoint decodes bit for bit; the folder is
written whole or not at all; the ratio on the shipped trained checkpoints beats 0.78 of bfloat16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compressed_checkpoints import (
    assert_bit_identical,
    compress,
    decoded_tensors,
    source_tensors,
)
from safetensors import safe_open
from safetensors.torch import save_file

from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.errors import CheckpointError, UnsupportedWeightsDtypeError
from gpu_backend.weights import compress as compress_module
from gpu_backend.weights import is_compressed
from gpu_backend.weights.format import CODED, METADATA_KEY, RAW, FileHeader

SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
TARGET_RATIO = 0.78  # at least 22% smaller than bfloat16 safetensors


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_every_tensor_of_every_test_checkpoint_round_trips(checkpoints: dict[str, Path], tmp_path: Path,
                                                           dtype: torch.dtype | None) -> None:
    for arch, folder in checkpoints.items():
        dst = tmp_path / arch
        compress(folder, dst, dtype)
        assert_bit_identical(source_tensors(folder, dtype), decoded_tensors(dst))


def test_sharded_checkpoint_keeps_its_shards_and_gets_a_new_index(checkpoints: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    src = checkpoints["llama_v4_sharded"]
    compress(src, tmp_path / "out")
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == shards
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    for stored, file in index["weight_map"].items():
        with safe_open(tmp_path / "out" / file, framework="pt") as handle:
            assert stored in handle.keys()  # noqa: SIM118 (safe_open is not a mapping)
    assert any("#ecf." in name for name in index["weight_map"])


@pytest.mark.parametrize("name", [SHAKESPEARE, MINILM])
def test_shipped_checkpoints_round_trip_and_are_22_percent_smaller_than_bfloat16(name: str,
                                                                                 tmp_path: Path) -> None:
    src = builtin_model_path(name)
    summary = compress(src, tmp_path / "out", torch.bfloat16)
    assert_bit_identical(source_tensors(src, torch.bfloat16), decoded_tensors(tmp_path / "out"))
    bf16_file = tmp_path / "bf16.safetensors"  # the same weights as a plain bfloat16 safetensors file
    save_file(source_tensors(src, torch.bfloat16), str(bf16_file), metadata={"format": "pt"})
    ratio = (tmp_path / "out" / "model.safetensors").stat().st_size / bf16_file.stat().st_size
    assert ratio < TARGET_RATIO, ratio
    assert summary.num_escapes < 0.001 * summary.num_coded_weights


def test_sidecar_files_are_copied_and_config_names_the_cast_dtype(tmp_path: Path) -> None:
    src = builtin_model_path(MINILM)
    compress(src, tmp_path / "out", torch.bfloat16)
    for sidecar in ("tokenizer.json", "vocab.txt", "1_Pooling/config.json", "modules.json"):
        assert (tmp_path / "out" / sidecar).read_bytes() == (src / sidecar).read_bytes()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert is_compressed(tmp_path / "out" / "model.safetensors") and not is_compressed(src / "model.safetensors")


def test_norms_biases_small_and_integer_tensors_are_stored_as_they_are(tmp_path: Path) -> None:
    src = builtin_model_path(MINILM)
    compress(src, tmp_path / "out", torch.bfloat16)
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as handle:
        header = FileHeader.from_metadata(handle.metadata(), "model.safetensors")
        stored = set(handle.keys())
    entries = header.tensors
    assert entries["encoder.layer.0.attention.output.LayerNorm.weight"].encoding == RAW
    assert entries["encoder.layer.0.attention.self.query.bias"].encoding == RAW
    assert entries["embeddings.token_type_embeddings.weight"].encoding == RAW  # 2 x 384: too small
    assert entries["embeddings.position_ids"].encoding == RAW and entries["embeddings.position_ids"].dtype == "int64"
    assert entries["embeddings.word_embeddings.weight"].encoding == CODED
    assert "encoder.layer.0.attention.self.query.bias" in stored
    assert "embeddings.word_embeddings.weight" not in stored


def test_a_matrix_that_would_grow_is_stored_as_it_is(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    save_file({"w": every}, str(src / "model.safetensors"))
    summary = compress(src, tmp_path / "out")
    assert (summary.num_coded, summary.num_raw) == (0, 1)
    assert_bit_identical({"w": every}, decoded_tensors(tmp_path / "out"))


def test_float16_checkpoint_is_refused_unless_cast(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "fp16"
    src.mkdir()
    save_file({k: v.half() for k, v in source_tensors(checkpoints["llama"]).items()}, str(src / "model.safetensors"))
    with pytest.raises(UnsupportedWeightsDtypeError, match="float16"):
        compress(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnsupportedWeightsDtypeError, match="float16"):
        compress(src, tmp_path / "out", torch.float16)
    compress(src, tmp_path / "out", torch.float32)  # lossless from float16
    assert_bit_identical(source_tensors(src, torch.float32), decoded_tensors(tmp_path / "out"))


def test_existing_destination_compressed_source_and_nested_destination_are_refused(checkpoints: dict[str, Path],
                                                               tmp_path: Path) -> None:
    compress(checkpoints["llama"], tmp_path / "out")
    with pytest.raises(CheckpointError, match="already exists"):
        compress(checkpoints["llama"], tmp_path / "out")
    with pytest.raises(CheckpointError, match="already compressed"):
        compress(tmp_path / "out", tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with pytest.raises(CheckpointError, match="is inside"):
        compress(tmp_path / "out", tmp_path / "out" / "nested")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in checkpoints["llama"].iterdir())


def test_an_interrupted_compress_leaves_nothing_behind(checkpoints: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def interrupted(tensor: torch.Tensor):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(tensor)

    real_encode = compress_module.encode
    monkeypatch.setattr(compress_module, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compress(checkpoints["llama_v4_sharded"], tmp_path / "out")
    assert os.listdir(tmp_path) == []


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from gpu_backend.loader import weight_files
from gpu_backend.weights import compress as module
real = module._compress_file
def killed(file, out, dtype, advance):
    real(file, out, dtype, advance)
    os.kill(os.getpid(), signal.SIGKILL)  # after the first shard is on disk, before the folder is complete
module._compress_file = killed
src = Path(sys.argv[1])
module.compress_checkpoint(src, Path(sys.argv[2]), weight_files(src), progress=False)
"""


def test_a_killed_compress_leaves_no_folder_that_looks_complete(checkpoints: dict[str, Path],
                                                                tmp_path: Path) -> None:
    dst = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", KILLED_RUN, str(checkpoints["llama_v4_sharded"]), str(dst)],
                         check=False, timeout=120, capture_output=True)
    assert run.returncode == -9, run.stderr.decode()
    assert not dst.exists()
    leftovers = list(tmp_path.iterdir())
    assert [p.name.startswith(".out.partial-") for p in leftovers] == [True]  # hidden, and not named DST
    with safe_open(next(leftovers[0].glob("*.safetensors")), framework="pt") as handle:
        assert METADATA_KEY in handle.metadata()

"""``edgewise weights compress`` end to end in-process (click's CliRunner), and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from click.testing import CliRunner, Result
from compressed_checkpoints import assert_bit_identical, decoded_tensors, source_tensors

from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.weights import is_compressed
from wrangler_like_cli.main import cli

SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"


def edgewise(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="edgewise")


def test_compress_a_folder_and_load_it(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    dst = tmp_path / "llama-ecf"
    result = edgewise("weights", "compress", str(checkpoints["llama"]), str(dst), "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert f"wrote {dst}" in result.output and "tensors coded" in result.output
    assert is_compressed(dst / "model.safetensors")
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    assert_bit_identical(source_tensors(checkpoints["llama"], torch.bfloat16), decoded_tensors(dst))
    output = LLM(str(dst), device="cpu", dtype="float32", progress=False).generate("Once", SamplingParams(max_tokens=4))
    assert len(output[0].outputs[0].token_ids) == 4


def test_a_builtin_model_name_is_a_source(tmp_path: Path) -> None:
    result = edgewise("weights", "compress", SHAKESPEARE, str(tmp_path / "shakespeare"))
    assert result.exit_code == 0, result.output
    assert_bit_identical(source_tensors(builtin_model_path(SHAKESPEARE)), decoded_tensors(tmp_path / "shakespeare"))


def test_an_architecture_the_backend_does_not_serve_is_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "gpt2"
    shutil.copytree(checkpoints["llama"], src)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (src / "config.json").write_text(json.dumps(config))
    result = edgewise("weights", "compress", str(src), str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "architecture GPT2LMHeadModel is not one the backend serves" in result.output
    assert not (tmp_path / "out").exists()


def test_float16_and_a_folder_without_weights_are_refused(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result = edgewise("weights", "compress", str(checkpoints["llama"]), str(tmp_path / "out"), "--dtype", "float16")
    assert result.exit_code == 1 and "no code for torch.float16" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = edgewise("weights", "compress", str(empty), str(tmp_path / "out"))
    assert result.exit_code == 1 and "has no config.json" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_help_names_the_command() -> None:
    result = edgewise("--help")
    assert "weights compress" in result.output
    result = edgewise("weights", "compress", "--help")
    assert result.exit_code == 0 and "--dtype" in result.output and "--format" in result.output

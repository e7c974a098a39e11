"""``edgewise weights compress``: a checkpoint folder with losslessly compressed weights (docs/weights-format.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .output import console, fail

_DTYPES = ("bfloat16", "float32", "float16")  # float16 is refused by the format, with the reason


@click.group()
def weights() -> None:
    """Checkpoint weights: lossless compression that the backend loads directly."""


@weights.command()
@click.argument("src", type=click.Path(file_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--dtype", type=click.Choice(_DTYPES), default=None,
              help="Cast the floating weights to this dtype first; compression is lossless with respect to it "
                   "(default: keep each tensor's dtype).")
@click.option("--format", "format_name", type=click.Choice(["ecf"]), default="ecf", show_default=True,
              help="The compressed format (docs/weights-format.md): ecf, a fixed-rate exponent code.")
def compress(src: Path, dst: Path, dtype: str | None, format_name: str) -> None:
    """Write SRC (a Hugging Face folder or a built-in model's name) to the new folder DST, weights compressed.

    \b
    Config, tokenizer and the other files are copied; matrices are stored in the fixed-rate ECF code
    (12 bits per bfloat16 weight), norms, biases and small tensors as they are. DST appears only once
    complete. `edgewise backend serve --model NAME=DST` and LLM(DST) load it like any checkpoint.
    """
    import torch

    from gpu_backend.errors import CheckpointError
    from gpu_backend.loader import weight_files
    from gpu_backend.weights import compress_checkpoint

    try:
        folder = _resolve(src)
        _check_architecture(folder)
        summary = compress_checkpoint(folder, dst, weight_files(folder),
                                      dtype=getattr(torch, dtype) if dtype else None)
    except CheckpointError as error:
        fail(str(error))
    console.print(f"wrote {dst}: {summary.num_coded} tensors coded ({summary.num_escapes} escapes in "
                  f"{summary.num_coded_weights:,} weights), {summary.num_raw} stored as they are; "
                  f"{summary.written_bytes / 2**20:,.1f} MiB of weights, {summary.ratio:.3f} of "
                  f"{summary.cast_bytes / 2**20:,.1f} MiB", markup=False, highlight=False, soft_wrap=True)


def _resolve(src: Path) -> Path:
    from gpu_backend.builtin_models import BUILTIN_MODELS

    name = str(src)
    return BUILTIN_MODELS.get(name, src)


def _check_architecture(folder: Path) -> None:
    """The checkpoint is one the backend serves, so the compressed folder can be loaded."""
    from gpu_backend.engine.embedder import is_embedding_checkpoint
    from gpu_backend.errors import CheckpointError, UnsupportedArchitectureError
    from gpu_backend.models.registry import MODELS

    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{folder} has no config.json; pass the folder of a Hugging Face checkpoint")
    architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    if not is_embedding_checkpoint(folder) and not any(arch in MODELS for arch in architectures):
        raise UnsupportedArchitectureError(
            f"{folder}: architecture {', '.join(architectures) or '(none named)'} is not one the backend serves "
            f"({', '.join([*MODELS, 'BertModel'])}), so a compressed copy could not be loaded")

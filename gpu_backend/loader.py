"""Copies a checkpoint's safetensors weights into a model's parameters, one tensor at a time.

The model decides where each tensor goes: ``model.packed_modules`` maps checkpoint sub-names to
fused parameters (``k_proj`` -> shard ``"k"`` of ``qkv_proj``), and a parameter that is fused or
sharded carries a ``weight_loader(param, tensor, shard_id)`` that copies its slice. Every tensor
must land somewhere and every parameter must be filled, so a wrong checkpoint never loads silently.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"
ShardId = str | int | None
Advance = Callable[[int], None]


def load_weights(model: torch.nn.Module, folder: Path, *, dtype: torch.dtype, device: torch.device,
                 progress: bool = True) -> None:
    """Fill every parameter of ``model`` from the ``*.safetensors`` files in ``folder``."""
    files = weight_files(Path(folder))
    packed: dict[str, tuple[str, ShardId]] = dict(getattr(model, "packed_modules", None) or {})
    params = dict(model.named_parameters(remove_duplicate=False))
    tied = ties_word_embeddings(model)
    loaded: dict[int, set[ShardId]] = {}  # by id(param): a parameter shared under two names is one entry
    show = progress and sys.stderr.isatty()
    with torch.no_grad(), _progress_bar(sum(f.stat().st_size for f in files), show) as advance:
        for file in files:
            for name, tensor in _read_tensors(file, advance):
                if _is_skipped(name, tied):
                    continue
                target, shard_id = packed_name(name, packed)
                param = params.get(target)
                if param is None:
                    raise CheckpointError(f"{file.name}: tensor {name!r} has no matching parameter in the model "
                                          "(is this checkpoint for another architecture?)")
                tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
                _load_one(param, tensor, shard_id, name)
                loaded.setdefault(id(param), set()).add(shard_id)
    _check_complete(params, loaded, packed, tied, folder)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files to read: model.safetensors, else the index's shards, else every *.safetensors."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; pass the folder of a Hugging Face checkpoint")
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if (folder / INDEX_FILE).is_file():
        return _indexed_files(folder / INDEX_FILE)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"no *.safetensors weights in {folder}; .bin checkpoints are not supported — convert with "
            "transformers: AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)"
        )
    return files


def _indexed_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index} is not a valid safetensors index ({error!r})") from None
    files = [index.parent / name for name in names]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise CheckpointError(f"{index} lists shards missing from {index.parent}: {', '.join(absent)}")
    return files


def _read_tensors(file: Path, advance: Advance) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield one tensor at a time: safe_open maps the file, so only the current tensor is resident."""
    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = handle.get_tensor(name)
                advance(tensor.numel() * tensor.element_size())
                yield name, tensor
    except SafetensorError as error:
        raise CheckpointError(f"{file} is not a readable safetensors file: {error}") from None


def ties_word_embeddings(model: torch.nn.Module) -> bool:
    """Whether the output projection reuses the input embedding (``model.config.tie_word_embeddings``)."""
    tied = getattr(model, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return bool(tied)


def _is_skipped(name: str, tied: bool) -> bool:
    # rotary tables are recomputed; old checkpoints saved them as buffers
    return name.endswith(".inv_freq") or (tied and name == LM_HEAD)


def packed_name(name: str, packed: dict[str, tuple[str, ShardId]]) -> tuple[str, ShardId]:
    """``a.k_proj.weight`` -> (``a.qkv_proj.weight``, "k"); names of unfused parameters pass through."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in packed:
            fused, shard_id = packed[part]
            return ".".join([*parts[:i], fused, *parts[i + 1:]]), shard_id
    return name, None


def _load_one(param: torch.nn.Parameter, tensor: torch.Tensor, shard_id: ShardId, name: str) -> None:
    weight_loader = getattr(param, "weight_loader", None)
    if weight_loader is not None:
        weight_loader(param, tensor, shard_id)
        return
    if tuple(param.shape) != tuple(tensor.shape):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)} but the model's parameter "
                              f"has shape {tuple(param.shape)} (config.json does not match the weights?)")
    param.data.copy_(tensor)


def _check_complete(params: dict[str, torch.nn.Parameter], loaded: dict[int, set[ShardId]],
                    packed: dict[str, tuple[str, ShardId]], tied: bool, folder: Path) -> None:
    """Every parameter (and every shard of a fused one) was written, except a tied lm_head."""
    for target, param in params.items():
        if tied and target == LM_HEAD:
            continue
        for shard_id in _expected_shards(target, packed):
            if shard_id not in loaded.get(id(param), ()):
                raise CheckpointError(f"checkpoint {folder} has no weight for {_checkpoint_name(target, shard_id, packed)}")


def _expected_shards(target: str, packed: dict[str, tuple[str, ShardId]]) -> list[ShardId]:
    parts = set(target.split("."))
    shards = [shard_id for fused, shard_id in packed.values() if fused in parts]
    return shards or [None]


def _checkpoint_name(target: str, shard_id: ShardId, packed: dict[str, tuple[str, ShardId]]) -> str:
    parts = target.split(".")
    for sub, (fused, sid) in packed.items():
        if sid == shard_id and fused in parts:
            return ".".join(sub if part == fused else part for part in parts)
    return target


@contextmanager
def _progress_bar(total_bytes: int, show: bool) -> Iterator[Advance]:
    """A rich bar over bytes read; a no-op unless ``show`` (stderr is a terminal)."""
    if not show:
        yield lambda num_bytes: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns: list[Any] = [TextColumn("Loading weights"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("weights", total=total_bytes)
        yield lambda num_bytes: bar.advance(task, num_bytes)
        bar.update(task, completed=total_bytes)  # headers are not counted per tensor

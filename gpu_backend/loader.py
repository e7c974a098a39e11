"""Copies a checkpoint's safetensors weights into a model's parameters, one tensor at a time.

The model decides where each tensor goes: ``model.packed_modules`` maps checkpoint sub-names to
fused parameters (``k_proj`` -> shard ``"k"`` of ``qkv_proj``), and a parameter that is fused or
sharded carries a ``weight_loader(param, tensor, shard_id)`` that copies its slice. Every tensor
must land somewhere and every parameter must be filled, so a wrong checkpoint never loads silently.

Tensors are opened lazily (``CheckpointTensor``): a tensor-parallel rank reads only its own slices.
A pipeline stage holds part of the model: ``model.owns_weight(name)`` returning False skips a
tensor unread, and ``model.weight_aliases`` ({checkpoint name: parameter name}) loads a tensor
into another parameter (a last stage's tied lm_head from ``model.embed_tokens.weight``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .checkpoint_tensor import CheckpointTensor
from .byte_progress import byte_progress
from .errors import CheckpointError
from .parallel.state import tp_size
from .prefetch import prefetching
from .weights.format import source_name
from .weights.packed import share_scratch
from .weights.reader import is_compressed, open_weights

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LM_HEAD = "lm_head.weight"
ShardId = str | int | None


def load_weights(model: torch.nn.Module, folder: Path, *, dtype: torch.dtype, device: torch.device,
                 progress: bool = True, keep_compressed: bool = False) -> int:
    """Fill every parameter of ``model`` from the ``*.safetensors`` files in ``folder``; returns bytes read.

    ``keep_compressed``: when the folder is ECF-compressed, the modules that can (linear layers,
    ``keep_compressed()``) hold their weights coded and decode them in their matmuls; every other
    tensor, and every tensor without it, is decoded here, at load time."""
    files = weight_files(Path(folder))
    targets = _Targets.of(model)
    holders = [m for m in model.modules() if hasattr(m, "keep_compressed")]
    if keep_compressed and holders and any(is_compressed(file) for file in files):
        for module in holders:
            module.keep_compressed()  # a no-op for layers built compressed (layers.linear.built_compressed)
    loaded: dict[int, set[ShardId]] = {}  # by id(param): a parameter shared under two names is one entry
    num_bytes_read = 0
    show = progress and sys.stderr.isatty()
    # a compressed file stores a tensor as parts named after it: prefetch the parts of wanted tensors
    ahead = prefetching(files, lambda stored: targets.wants(source_name(stored))) if tp_size() == 1 else nullcontext()
    total_bytes = sum(f.stat().st_size for f in files)
    with torch.no_grad(), ahead, byte_progress("Loading weights", total_bytes, show) as advance:
        for file in files:
            for tensor in _open_tensors(file, dtype, device, targets.wants):
                param, shard_id = targets.find(tensor.name, file)
                _load_one(param, tensor, shard_id, tensor.name)
                loaded.setdefault(id(param), set()).add(shard_id)
                advance(tensor.bytes_read)
                num_bytes_read += tensor.bytes_read
    _check_complete(targets, loaded, folder)
    for module in holders:
        module.finish_loading()
    if device.type == "cuda" and keep_compressed:
        share_scratch(m.compressed for m in holders if m.compressed is not None)  # batches decode into it
        torch.cuda.empty_cache()  # the emptied dense weights go back to the driver
    return num_bytes_read


@dataclass(frozen=True)
class _Targets:
    """Where the model puts each checkpoint tensor: fused parameters, tied head, stage ownership, aliases."""

    params: dict[str, torch.nn.Parameter]
    packed: dict[str, tuple[str, ShardId]]
    tied: bool
    owns_weight: Callable[[str], bool]
    aliases: dict[str, str]

    @classmethod
    def of(cls, model: torch.nn.Module) -> _Targets:
        return cls(params=dict(model.named_parameters(remove_duplicate=False)),
                   packed=dict(getattr(model, "packed_modules", None) or {}),
                   tied=ties_word_embeddings(model),
                   owns_weight=getattr(model, "owns_weight", None) or (lambda name: True),
                   aliases=dict(getattr(model, "weight_aliases", None) or {}))

    def wants(self, name: str) -> bool:
        return not _is_skipped(name, self.tied) and self.owns_weight(name)

    def find(self, name: str, file: Path) -> tuple[torch.nn.Parameter, ShardId]:
        target, shard_id = packed_name(self.aliases.get(name, name), self.packed)
        param = self.params.get(target)
        if param is None:
            raise CheckpointError(f"{file.name}: tensor {name!r} has no matching parameter in the model "
                                  "(is this checkpoint for another architecture?)")
        return param, shard_id

    def checkpoint_name(self, target: str, shard_id: ShardId) -> str:
        """The checkpoint tensor that fills ``target`` (its shard ``shard_id``), for error messages."""
        aliased_from = {param: name for name, param in self.aliases.items()}
        return _checkpoint_name(aliased_from.get(target, target), shard_id, self.packed)

    def is_tied_head(self, target: str) -> bool:
        # a tied lm_head shares the embedding's weight, unless an alias fills it on its own (last stage)
        return self.tied and target == LM_HEAD and LM_HEAD not in self.aliases.values()


def is_compressed_folder(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` has ECF-compressed weights (docs/weights-format.md)."""
    return any(is_compressed(file) for file in weight_files(Path(folder)))


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


def _open_tensors(file: Path, dtype: torch.dtype, device: torch.device,
                  wants: Callable[[str], bool]) -> Iterator[CheckpointTensor]:
    """Yield each wanted tensor of ``file`` unread: its weight loader reads what it keeps, while the file is open.

    A compressed file (docs/weights-format.md) is detected by its header and decoded tensor by tensor."""
    try:
        with open_weights(file, decode_device=device) as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if wants(name):  # skipped tensors are never opened, let alone read
                    yield CheckpointTensor(name, handle.get_slice(name), dtype=dtype, device=device)
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


def _load_one(param: torch.nn.Parameter, tensor: CheckpointTensor, shard_id: ShardId, name: str) -> None:
    weight_loader = getattr(param, "weight_loader", None)
    if weight_loader is not None:
        try:
            weight_loader(param, tensor, shard_id)
        except CheckpointError as error:
            raise CheckpointError(f"tensor {name!r}: {error}") from None
        return
    if tuple(param.shape) != tuple(tensor.shape):
        raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)} but the model's parameter "
                              f"has shape {tuple(param.shape)} (config.json does not match the weights?)")
    param.data.copy_(tensor.read())


def _check_complete(targets: _Targets, loaded: dict[int, set[ShardId]], folder: Path) -> None:
    """Every parameter (and every shard of a fused one) was written, except a tied lm_head."""
    for target, param in targets.params.items():
        if targets.is_tied_head(target):
            continue
        for shard_id in _expected_shards(target, targets.packed):
            if shard_id not in loaded.get(id(param), ()):
                name = targets.checkpoint_name(target, shard_id)
                raise CheckpointError(f"checkpoint {folder} has no weight for {name}")


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



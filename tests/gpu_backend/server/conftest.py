"""A running backend over the tiny random Llama (as @cf/test/llama) and the built-in MiniLM embedder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend_fixtures import EMBEDDINGS, MINILM, MODEL, OPTIONS, TOKEN, Backend, serving
from gpu_backend import LLM
from gpu_backend.builtin_models import builtin_model_path
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines


@pytest.fixture(scope="module")
def backend(checkpoints: dict[str, Path]) -> Iterator[Backend]:
    engines = LocalEngines({MODEL: checkpoints["llama"], EMBEDDINGS: builtin_model_path(MINILM)}, **OPTIONS)
    try:
        with serving(create_app(engines, TOKEN, max_queue=8)) as url:
            yield Backend(url, engines)
    finally:
        engines.shutdown()


@pytest.fixture(scope="module")
def offline(checkpoints: dict[str, Path]) -> LLM:
    return LLM(str(checkpoints["llama"]), progress=False, **OPTIONS)

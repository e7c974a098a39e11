"""The names Cloudflare's `workers` module exports (SDK 1.9.5 `__all__`) import here too."""

from __future__ import annotations

import pytest

import workers
from workers import _state

CLOUDFLARE_ALL = (
    "Blob BlobEnding BlobValue Body Context DurableObject FetchKwargs FetchResponse File FormData FormDataValue "
    "Headers JSBody Request RequestInitCfProperties Response WorkerEntrypoint WorkflowEntrypoint env fetch handler "
    "import_from_javascript patch_env python_from_rpc python_to_rpc waitUntil wait_until"
).split()


@pytest.mark.parametrize("name", CLOUDFLARE_ALL)
def test_every_cloudflare_name_is_importable(name: str) -> None:
    namespace: dict = {}
    exec(f"from workers import {name}", namespace)
    assert name in namespace


def test_patch_env_overlays_and_restores() -> None:
    token = _state.current.set(_state.Invocation(workers.JsDict(MESSAGE="base", OTHER="kept")))
    try:
        with workers.patch_env(MESSAGE="patched") as env:
            assert workers.env.MESSAGE == "patched" and env.OTHER == "kept"
        assert workers.env.MESSAGE == "base"
    finally:
        _state.current.reset(token)


def test_import_from_javascript() -> None:
    token = _state.current.set(_state.Invocation(workers.JsDict(A="1")))
    try:
        assert workers.import_from_javascript("cloudflare:workers").env.A == "1"
    finally:
        _state.current.reset(token)
    with pytest.raises(ImportError, match="only 'cloudflare:workers'"):
        workers.import_from_javascript("node:fs")

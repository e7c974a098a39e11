"""The backend tests' models and token, and a handle on a running backend.

``serving`` (re-exported here) runs an app on a real 127.0.0.1 socket on a thread of its own, so
synchronous clients (the official ``cloudflare`` and ``openai`` SDKs) and async tests alike talk
to it over TCP.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gpu_backend.server.api import create_app
from gpu_backend.server.background import serving
from gpu_backend.server.client import LocalEngines

__all__ = ["EMBEDDINGS", "MINILM", "MODEL", "OPTIONS", "TOKEN", "Backend", "metric", "served_backend", "serving"]

MODEL = "@cf/test/llama"
EMBEDDINGS = "@cf/baai/bge-small-en-v1.5"  # a Workers AI name, mapped to the built-in MiniLM
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
TOKEN = "test-token"
OPTIONS = {"device": "cpu", "dtype": "float32", "num_kv_blocks": 64, "max_model_len": 256}


@dataclass
class Backend:
    url: str
    engines: Any  # LocalEngines

    def headers(self, token: str = TOKEN) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    def run_url(self, model: str = MODEL) -> str:
        return f"{self.url}/client/v4/accounts/acct/ai/run/{model}"

    def run(self, body: dict[str, Any], model: str = MODEL) -> httpx.Response:
        """POST ``body`` to the Workers AI run route of ``model``."""
        return httpx.post(self.run_url(model), json=body, headers=self.headers(), timeout=60)

    def openai_client(self, prefix: str = "/v1") -> Any:
        """The real ``openai`` SDK pointed at this backend (no retries: a test sees the first answer)."""
        import openai

        return openai.OpenAI(base_url=self.url + prefix, api_key=TOKEN, max_retries=0)


@contextmanager
def served_backend(models: Mapping[str, str | Path], max_queue: int = 8, **options: Any) -> Iterator[Backend]:
    """A backend serving ``models`` (LocalEngines with ``options``), running until the block ends."""
    engines = LocalEngines(dict(models), **options)
    try:
        with serving(create_app(engines, TOKEN, max_queue=max_queue)) as url:
            yield Backend(url, engines)
    finally:
        engines.shutdown()


def metric(url: str, name: str, model: str = MODEL) -> float:
    """One series' value from ``/metrics`` (0 when absent)."""
    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0

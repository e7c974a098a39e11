"""A backend app served by uvicorn on a real 127.0.0.1 socket, on a thread of its own, and its test models.

Its own event loop lets synchronous clients (the official ``cloudflare`` and ``openai`` SDKs)
and async tests alike talk to it over TCP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

STARTUP_TIMEOUT_S = 30
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


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``with serving(app) as url:`` -> "http://127.0.0.1:PORT" until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                           ws_ping_interval=None, timeout_graceful_shutdown=2))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    for _ in range(STARTUP_TIMEOUT_S * 100):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.01)
    if not server.started:
        raise RuntimeError("the backend did not start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

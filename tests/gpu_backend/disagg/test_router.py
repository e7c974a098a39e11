"""gpu_backend.disagg.router: load in tokens, ties by KV blocks, sessions sent back to their workers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from backend_fixtures import MODEL, OPTIONS, TOKEN, Backend, serving
from gpu_backend.config import ParallelConfig
from gpu_backend.disagg.router import Router, token_loads
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines


@dataclass
class Request:
    worker: int
    decode_worker: int | None = None
    prompt_len: int = 0
    generated: list[int] = field(default_factory=list)


@dataclass
class Load:
    kv_blocks_used: int = 0


def test_token_loads_count_prompts_where_they_are_computed_and_kv_where_it_is_read() -> None:
    requests = [Request(0, prompt_len=100),  # colocated, prefilling
                Request(1, prompt_len=10, generated=[1, 2, 3]),  # colocated, decoding: 13 tokens held
                Request(2, decode_worker=3, prompt_len=50),  # prefilling on 2, its KV goes to 3
                Request(3, decode_worker=3, prompt_len=20, generated=[7])]  # decoding on 3
    assert token_loads(requests, 4) == [100, 13, 50, 50 + 21]


def test_the_least_loaded_worker_of_the_role_wins_and_ties_go_by_blocks() -> None:
    router = Router(["prefill", "prefill", "decode", "decode"])
    loads = [Load(), Load(), Load(9), Load(2)]
    assert router.pick("prefill", [Request(0, prompt_len=500)], loads) == 1  # 0 has a long prompt to compute
    assert router.pick("prefill", [Request(0, prompt_len=5), Request(1, prompt_len=50)], loads) == 0
    assert router.pick("decode", [], loads) == 3  # both idle: the one with fewer blocks in use
    assert router.pick("decode", [Request(3, prompt_len=10, generated=[1])], loads) == 2


def test_a_session_goes_back_to_its_workers_and_old_sessions_are_forgotten() -> None:
    router = Router(["colocated", "colocated"], max_sessions=2)
    loads = [Load(), Load()]
    busy_zero = [Request(0, prompt_len=1000)]
    assert router.pick("colocated", busy_zero, loads, session="chat-1") == 1
    assert router.pick("colocated", [Request(1, prompt_len=1000)], loads, session="chat-1") == 1  # affinity
    assert router.pick("colocated", [], loads, session="chat-2") == 0
    router.pick("colocated", [], loads, session="chat-3")  # pushes out chat-1, the least recent
    assert router.pick("colocated", [Request(1, prompt_len=1000)], loads, session="chat-1") == 0


async def test_the_session_header_keeps_a_conversation_on_its_worker(checkpoints: dict[str, Path]) -> None:
    """Through the service: concurrent requests of one session all go to one of two colocated workers."""
    engines = LocalEngines({MODEL: checkpoints["llama"]}, parallel=ParallelConfig(num_workers=2), **OPTIONS)
    body = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 8}
    try:
        with serving(create_app(engines, TOKEN)) as url:
            backend = Backend(url, engines)
            async with httpx.AsyncClient(headers=backend.headers(), timeout=60) as client:
                async def ask(session: str | None) -> int:
                    headers = {"x-session-affinity": session} if session else {}
                    return (await client.post(backend.run_url(), json=body, headers=headers)).status_code

                assert await asyncio.gather(*(ask("chat-42") for _ in range(4))) == [200] * 4
                pinned = list(engines.engine(MODEL).requests_per_worker)
                assert sorted(pinned) == [0, 4]
                assert await asyncio.gather(*(ask(None) for _ in range(4))) == [200] * 4
                spread = [after - before for after, before in zip(engines.engine(MODEL).requests_per_worker, pinned)]
                assert min(spread) > 0  # without a session the same load is shared out
    finally:
        engines.shutdown()

"""Hundreds of clients leaving at random moments, over HTTP (whole answers and SSE) and WebSocket,
some in JSON mode, in one process and with prefill and decode on separate instances: afterwards nothing runs, no
admission slot is held and no KV block is used, and the next request is answered."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from backend_fixtures import MODEL, OPTIONS, TOKEN, serving
from gpu_backend.cluster.config import ClusterConfig
from gpu_backend.server.api import create_app
from gpu_backend.server.client import LocalEngines

NUM_CLIENTS = 240
AT_ONCE = 40  # clients connected at the same time
SEED = 15
SMALL_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["n"], "additionalProperties": False}
LAYOUTS = {
    "single": None,
    "disaggregated": ClusterConfig.disaggregated(instance_timeout_s=20.0),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request: pytest.FixtureRequest, checkpoints: dict[str, Path]) -> Iterator[tuple[str, str, Any]]:
    engines = LocalEngines({MODEL: checkpoints["llama"]}, cluster=LAYOUTS[request.param], **OPTIONS)
    try:
        app = create_app(engines, TOKEN, max_queue=NUM_CLIENTS)  # the leaves, not 429s, are under test
        with serving(app) as url:
            yield request.param, url, app.state.service
    finally:
        engines.shutdown()


async def _leave_http(url: str, body: dict[str, Any], read_bytes: int, delay_s: float) -> str:
    """Send the request on a raw connection, read up to ``read_bytes`` of the answer (0: none)
    within ``delay_s``, then close. Returns what was seen of the answer's status."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    raw = json.dumps(body).encode()
    writer.write(f"POST /client/v4/accounts/a/ai/run/{MODEL} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
                 f"{TOKEN}\r\ncontent-length: {len(raw)}\r\n\r\n".encode() + raw)
    seen = b""
    try:
        await writer.drain()
        if read_bytes:
            async with asyncio.timeout(delay_s):
                while len(seen) < read_bytes:
                    chunk = await reader.read(read_bytes - len(seen))
                    if not chunk:
                        break
                    seen += chunk
        else:
            await asyncio.sleep(delay_s)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return seen.split(b" ", 2)[1].decode()[0] + "xx" if seen.startswith(b"HTTP/1.1 ") else "left before the status"


async def _leave_websocket(url: str, body: dict[str, Any], frames: int, delay_s: float) -> str:
    ws_url = f"{url.replace('http', 'ws', 1)}/client/v4/accounts/a/ai/run/{MODEL}"
    async with websockets.connect(ws_url, additional_headers={"authorization": f"Bearer {TOKEN}"}) as socket_:
        await socket_.send(json.dumps(body))
        try:
            async with asyncio.timeout(delay_s):
                for _ in range(frames):
                    if "error" in json.loads(await socket_.recv()):
                        return "error frame"
        except TimeoutError:
            pass
    return "left"


async def _client(rng: random.Random, url: str) -> tuple[str, str]:
    body = {"prompt": rng.choice(["Once upon a time", "The", "ROMEO: what light"]), "temperature": 0,
            "max_tokens": rng.choice([8, 60, 200]), "ignore_eos": True, "stream": rng.random() < 0.6}
    delay_s = rng.choice([0.0, 0.0, 0.005, 0.02, 0.1, 0.3])
    if rng.random() < 0.25:  # JSON mode, whole answers (it does not stream on Workers AI): masks fill as clients leave
        body = {"prompt": body["prompt"], "temperature": 0, "max_tokens": 60,
                "response_format": {"type": "json_schema", "json_schema": SMALL_SCHEMA}}
        read_bytes = rng.choice([0, 0, 20, 400])
        return f"http json, {read_bytes} bytes", await _leave_http(url, body, read_bytes, delay_s)
    if rng.random() < 0.35:
        frames = rng.choice([0, 1, 3])
        return f"websocket, {frames} frames", await _leave_websocket(url, body, frames, delay_s)
    read_bytes = rng.choice([0, 0, 20, 400])
    kind = "sse" if body["stream"] else "whole"
    return f"http {kind}, {read_bytes} bytes", await _leave_http(url, body, read_bytes, delay_s)


def _held(service: Any) -> dict[str, int]:
    stats = service.client.stats()[MODEL]
    held = {"slots": service.admission.total_in_flight(), "running": stats["num_running"],
            "waiting": stats["num_waiting"], "kv_blocks_used": stats["kv_blocks_used"]}
    return {name: count for name, count in held.items() if count}


async def test_clients_leaving_at_random_moments_leave_nothing_behind(layout: tuple[str, str, Any]) -> None:
    name, url, service = layout
    rng = random.Random(SEED)
    outcomes: Counter[str] = Counter()
    for _ in range(NUM_CLIENTS // AT_ONCE):
        for kind, seen in await asyncio.gather(*(_client(rng, url) for _ in range(AT_ONCE))):
            outcomes[f"{kind}: {seen}"] += 1
    deadline = time.monotonic() + 10  # a generation left running (up to 200 tokens each) would take longer
    while _held(service) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    held = _held(service)
    print(f"\n{name}: {NUM_CLIENTS} clients left at random moments; held afterwards: {held or 'nothing'}")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:4d}  {outcome}")
    assert not held
    assert not any(outcome.endswith(("5xx", "4xx")) for outcome in outcomes)
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        reply = await client.post(f"{url}/client/v4/accounts/a/ai/run/{MODEL}",
                                  json={"prompt": "Once", "max_tokens": 3, "ignore_eos": True})
    assert reply.status_code == 200 and reply.json()["result"]["usage"]["completion_tokens"] == 3

"""/metrics stays bounded: model labels take only the served models' names plus ``other``, and no raw control byte."""

from __future__ import annotations

import asyncio
import random
import re
import string

import httpx

from backend_fixtures import EMBEDDINGS, MODEL, Backend
from gpu_backend.server.metrics import OTHER_MODEL, label_value

NUM_UNKNOWN_NAMES = 500
_CONTROL_BYTES = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")  # every control byte but the newline


def _random_name(rng: random.Random) -> str:
    return "@cf/" + "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=rng.randint(4, 40)))


async def _scrape(client: httpx.AsyncClient, backend: Backend) -> bytes:
    reply = await client.get(f"{backend.url}/metrics")
    assert reply.status_code == 200
    return reply.content


async def test_unknown_model_names_add_no_series_and_no_control_bytes(backend: Backend) -> None:
    rng = random.Random(15)
    names = [_random_name(rng) for _ in range(NUM_UNKNOWN_NAMES)] + ["%00", "a%0Ab", "%22%5C", "%ED%A0%80"]
    async with httpx.AsyncClient(headers=backend.headers(), timeout=30) as client:
        warm = await client.post(f"{backend.url}/client/v4/accounts/a/ai/run/@cf/warm/up", json={"prompt": "x"})
        assert warm.status_code == 400  # the one "other" series of a 400 exists before the baseline
        before = await _scrape(client, backend)
        gate = asyncio.Semaphore(16)

        async def ask(name: str) -> int:
            async with gate:
                reply = await client.post(f"{backend.url}/client/v4/accounts/a/ai/run/{name}", json={"prompt": "x"})
                return reply.status_code

        statuses = await asyncio.gather(*(ask(name) for name in names))
        after = await _scrape(client, backend)
    assert set(statuses[:NUM_UNKNOWN_NAMES]) == {400}  # no such model
    assert set(statuses) <= {400, 404}  # a name with a newline matches no route
    assert len(after) < len(before) + 1024, "at most a few series of the \"other\" model may appear"
    assert _CONTROL_BYTES.search(after) is None
    assert f'model="{OTHER_MODEL}",route="workers-ai",status="400"'.encode() in after
    served = {match.decode() for match in re.findall(rb'model="([^"]*)"', after)}
    assert served <= {MODEL, EMBEDDINGS, OTHER_MODEL}


def test_label_values_spell_control_characters_out() -> None:
    assert label_value("@cf/meta/llama-3.1-8b-instruct") == "@cf/meta/llama-3.1-8b-instruct"
    assert label_value("a\x00b\x7f\u200b\ud800") == "a\\u0000b\\u007f\\u200b\\ud800"
    assert label_value("naïve 模型") == "naïve 模型"  # printable non-ASCII is kept

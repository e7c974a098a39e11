"""``edgewise tail``: stream the dev server's invocation logs, like ``wrangler tail``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
import websockets

from edge_runtime.tail import pretty

from .output import console, fail


def _matches(event: dict[str, Any], status: str | None, method: str | None, search: str | None) -> bool:
    if status == "ok" and event["outcome"] != "ok":
        return False
    if status == "error" and event["outcome"] == "ok":
        return False
    request = event["event"].get("request")
    if method and (request is None or request["method"].upper() != method.upper()):
        return False
    return not search or search in json.dumps(event)


async def _stream(url: str, fmt: str, status: str | None, method: str | None, search: str | None,
                  limit: int | None) -> None:
    seen = 0
    async with websockets.connect(url, open_timeout=10) as connection:
        if fmt == "pretty":
            console.print(f"Connected to {url}, waiting for logs...", style="dim")
        async for message in connection:
            event = json.loads(message)
            if not _matches(event, status, method, search):
                continue
            print(json.dumps(event) if fmt == "json" else pretty(event), flush=True)
            seen += 1
            if limit is not None and seen >= limit:
                return


@click.command()
@click.option("--url", default="http://127.0.0.1:8787", show_default=True, help="The dev server's front door.")
@click.option("--format", "fmt", type=click.Choice(["json", "pretty"]), default="pretty", show_default=True)
@click.option("--status", type=click.Choice(["ok", "error"]), help="Only successful, or only failed, invocations.")
@click.option("--method", help="Only requests with this HTTP method.")
@click.option("--search", help="Only events whose JSON contains this text.")
@click.option("--limit", type=click.IntRange(1), help="Exit after this many events.")
def tail(url: str, fmt: str, status: str | None, method: str | None, search: str | None, limit: int | None) -> None:
    """Stream request logs from a running `edgewise dev` (JSON lines or pretty)."""
    ws_url = url.replace("https://", "wss://").replace("http://", "ws://").rstrip("/") + "/cdn-cgi/edgewise/tail"
    try:
        asyncio.run(_stream(ws_url, fmt, status, method, search, limit))
    except (OSError, websockets.InvalidHandshake, TimeoutError) as error:
        fail(f"cannot tail {url}: {error} (is `edgewise dev` running there?)")
    except websockets.ConnectionClosed as error:
        fail(f"lost the connection to {url}: {error} (did `edgewise dev` stop?)")
    except KeyboardInterrupt:
        pass

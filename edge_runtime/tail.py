"""Tail events: what each invocation did, fanned out to ``edgewise tail`` clients and printed in two formats.

Credentials stay out of them by default: the values of credential headers, and the run's own tokens
(the AI backends' and the control token) wherever they appear; ``edgewise dev --show-secrets`` keeps them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from edgewise_sdk.workers import _state

_QUEUE_SIZE = 1000
REDACTED = "REDACTED"  # what Cloudflare's tail shows in place of a credential header's value
REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_HIDDEN_TOKEN = "***"


class TailHub:
    """Publish/subscribe of tail events; a slow subscriber loses events instead of slowing requests."""

    def __init__(self, secret_values: Iterable[str] = (), redact: bool = True) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._secret_values = tuple(value for value in secret_values if value)
        self._redact = redact
        install_log_capture()

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        if self._redact:
            event = redacted(event, self._secret_values)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


class InvocationLogHandler(logging.Handler):
    """Copies Worker log records (logger ``edgewise.worker``: console.log, logging) into the tail event."""

    def emit(self, record: logging.LogRecord) -> None:
        invocation = _state.current.get()  # the records go into the tail event of the invocation running now
        logs = None if invocation is None else invocation.logs
        if logs is not None:
            level = "log" if record.levelno == logging.INFO else record.levelname.lower()
            logs.append({"message": [record.getMessage()], "level": level, "timestamp": int(record.created * 1000)})


def redacted(event: dict[str, Any], secret_values: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``event`` without credential header values, and with each of ``secret_values`` hidden."""
    request = event.get("event", {}).get("request")
    if isinstance(request, dict) and isinstance(request.get("headers"), dict):
        headers = {name: REDACTED if name.lower() in REDACTED_HEADERS else value
                   for name, value in request["headers"].items()}
        event = {**event, "event": {**event["event"], "request": {**request, "headers": headers}}}
    return _without(event, secret_values) if secret_values else event


def _without(value: Any, secret_values: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secret_values:
            value = value.replace(secret, _HIDDEN_TOKEN)
        return value
    if isinstance(value, dict):
        return {key: _without(item, secret_values) for key, item in value.items()}
    if isinstance(value, list):
        return [_without(item, secret_values) for item in value]
    return value


def install_log_capture() -> None:
    """Attach one ``InvocationLogHandler`` to the Worker logger (idempotent: every Edge shares it)."""
    worker_log = logging.getLogger("edgewise.worker")
    if not any(isinstance(handler, InvocationLogHandler) for handler in worker_log.handlers):
        worker_log.addHandler(InvocationLogHandler())


def request_event(script: str, outcome: str, request: dict[str, Any], status: int | None,
                  logs: list[dict[str, Any]], exceptions: list[dict[str, Any]], colo: str, ray: str,
                  duration_ms: float) -> dict[str, Any]:
    """Wrangler tail's JSON event shape, plus an ``edgewise`` table with the colo, ray id and duration."""
    return {
        "outcome": outcome,
        "scriptName": script,
        "entrypoint": "Default",
        "exceptions": exceptions,
        "logs": logs,
        "eventTimestamp": int(time.time() * 1000),
        "event": {"request": request, "response": {"status": status}},
        "edgewise": {"colo": colo, "rayId": ray, "durationMs": round(duration_ms, 3)},
    }


def exception_entry(error: BaseException) -> dict[str, Any]:
    return {"name": type(error).__name__, "message": str(error), "timestamp": int(time.time() * 1000)}


_OUTCOMES = {"ok": "Ok", "exception": "Exception Thrown", "exceededCpu": "Exceeded CPU Limit",
             "exceededMemory": "Exceeded Memory Limit", "canceled": "Canceled"}


def pretty(event: dict[str, Any]) -> str:
    """Wrangler's pretty format: ``GET https://host/path - Ok @ <time>`` then the logs and exceptions."""
    when = datetime.fromtimestamp(event["eventTimestamp"] / 1000).strftime("%m/%d/%Y, %I:%M:%S %p")
    outcome = _OUTCOMES.get(event["outcome"], "Unknown")
    detail = event["event"]
    if "cron" in detail:
        head = f'"{detail["cron"]}" @ {when} - {outcome}'
    elif "type" in detail:  # an invocation other than a request (edge_runtime/invocation.py)
        what = " ".join(f"{key}={value}" for key, value in detail.items() if key != "type")
        head = f"{detail['type']} {what} - {outcome} @ {when}"
    else:
        request = detail["request"]
        head = f"{request['method']} {request['url']} - {outcome} @ {when}"
    edge = event.get("edgewise", {})
    if edge:
        head += f"  [{edge.get('colo')} {edge.get('rayId')}]"
    lines = [head]
    lines += [f"  ({log['level']}) {' '.join(map(str, log['message']))}" for log in event["logs"]]
    lines += [f"  {error['name']}: {error['message']}" for error in event["exceptions"]]
    return "\n".join(lines)

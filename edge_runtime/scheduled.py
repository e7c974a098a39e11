"""Scheduled (cron) invocations, triggered in dev through ``/__scheduled`` and ``/cdn-cgi/handler/scheduled``."""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from edgewise_sdk.workers import Context, _state

from . import http_io
from .tail import exception_entry
from .worker import ScheduledController

if TYPE_CHECKING:
    from .pop import Pop

log = logging.getLogger("edgewise.edge")

SCHEDULED_PATHS = frozenset({"/__scheduled", "/cdn-cgi/handler/scheduled", "/cdn-cgi/mf/scheduled",
                             "/cdn-cgi/local/scheduled"})
DEFAULT_CRON = "* * * * *"


def controller_from_query(query: bytes) -> ScheduledController:
    params = parse_qs(query.decode("latin-1"))
    cron = params.get("cron", [DEFAULT_CRON])[0]
    raw_time = params.get("time", [""])[0]
    scheduled_ms = int(raw_time) if raw_time.isdigit() else int(time.time() * 1000)
    return ScheduledController(cron=cron, scheduledTime=scheduled_ms)


async def run_scheduled(pop: Pop, controller: ScheduledController) -> tuple[str, BaseException | None]:
    """Invoke the Worker's scheduled handler on ``pop``; returns ("ok" | "exception", error)."""
    ctx, logs = Context(), []
    token = _state.current.set(_state.Invocation(pop.env, ctx, None, logs))
    try:
        await pop.worker.scheduled(controller, pop.env, ctx)
        outcome, failure = "ok", None
    except Exception as error:
        detail = "".join(traceback.format_exception(error)).rstrip()
        log.error("Scheduled handler failed at %s (cron %r)\n%s", pop.colo, controller.cron, detail)
        outcome, failure = "exception", error
    finally:
        _state.current.reset(token)
    pop.after_invocation(ctx, f"cron {controller.cron}")
    _publish(pop, controller, outcome, logs, failure)
    return outcome, failure


def _publish(pop: Pop, controller: ScheduledController, outcome: str, logs: list, failure: BaseException | None) -> None:
    if pop.services.hub.has_subscribers:
        pop.services.hub.publish({
            "outcome": outcome, "scriptName": pop.services.config.name, "entrypoint": "Default",
            "exceptions": [exception_entry(failure)] if failure else [], "logs": logs,
            "eventTimestamp": int(time.time() * 1000),
            "event": {"cron": controller.cron, "scheduledTime": controller.scheduledTime},
            "edgewise": {"colo": pop.colo},
        })


async def run_scheduled_endpoint(pop: Pop, scope: dict[str, Any], send: Any) -> None:
    """Body ``ok`` (200) or ``exception`` (500), or the result object with ``format=json``, like miniflare."""
    controller = controller_from_query(scope.get("query_string", b""))
    outcome, _ = await run_scheduled(pop, controller)
    status = 200 if outcome == "ok" else 500
    if b"format=json" in scope.get("query_string", b""):
        body = json.dumps({"outcome": outcome, "noRetry": False}).encode()
        await http_io.send_plain(send, status, body, "application/json")
        return
    await http_io.send_plain(send, status, outcome.encode(), "text/plain;charset=UTF-8")

"""The WebSocket endpoint: ``/client/v4/accounts/{id}/ai/run/{model}`` upgraded, one generation at a time.

Protocol (also in docs/api.md): the client sends the Workers AI inputs as one JSON text frame
(``{"prompt": "...", "max_tokens": 64}``; ``stream`` is implied). The service answers with the
payloads of the SSE stream, one JSON text frame each: ``{"response": "..."}`` per piece of text,
then ``{"response": "", "usage": {...}, "done": true}``. A refused or failed generation is one
``{"error": {"code", "message"}, "done": true}`` frame; the connection stays open for the next
inputs. ``"options": {"rejectIfBusy": true}`` in a frame refuses it at once (3040) when every slot
of the model is taken, as on REST. So is a bad frame (malformed or too deep JSON, over ``InputLimits.max_frame_bytes``),
and a frame sent while a generation runs: one error frame each. Closing the socket aborts the
running generation and frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from .body import parse_frame
from .errors import BadInputError
from .generation import Generation
from .schemas import SESSION_HEADER, parse_text_generation
from .streaming import TRACE_HEADER, error_payload, workers_ai_payloads
from .workers_ai import model_name, reject_if_busy

if TYPE_CHECKING:
    from .api import Service


async def run_model_websocket(websocket: WebSocket) -> None:
    service: Service = websocket.app.state.service
    model = model_name(websocket)  # type: ignore[arg-type]
    trace = TRACE_HEADER in websocket.headers
    await websocket.accept()
    frames: asyncio.Queue[str | None] = asyncio.Queue()
    reader = asyncio.ensure_future(_read(websocket, frames))
    try:
        text = await frames.get()
        while text is not None:
            text = await _serve_one(service, websocket, model, text, trace, frames)
    finally:
        reader.cancel()


async def _serve_one(service: Service, websocket: WebSocket, model: str, text: str, trace: bool,
                     frames: asyncio.Queue[str | None]) -> str | None:
    """Run the generation ``text`` asks for; returns the next frame, or None once the client has left."""
    running = asyncio.ensure_future(_generate(service, websocket, model, text, trace))
    while True:
        waiter = asyncio.ensure_future(frames.get())
        await asyncio.wait({running, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the generation ended first
            waiter.cancel()
            return await frames.get()
        following = waiter.result()
        if following is None:  # the client left: abort the generation, freeing its blocks
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            return None
        if running.done():
            return following
        busy = BadInputError("one generation at a time per connection: wait for the frame with \"done\": true")
        await _send(websocket, {**error_payload(busy), "done": True})


async def _read(websocket: WebSocket, frames: asyncio.Queue[str | None]) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            frames.put_nowait(message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace"))
    except (WebSocketDisconnect, RuntimeError):
        pass
    frames.put_nowait(None)


async def _generate(service: Service, websocket: WebSocket, model: str, text: str, trace: bool) -> None:
    try:
        body = parse_frame(text, service.limits)
        busy_refused = reject_if_busy(body)
        inputs = parse_text_generation(body, model, websocket.headers.get(SESSION_HEADER), service.limits)
        served = service.client.served_name(model)
        if busy_refused:  # no await until Generation holds its slot
            service.admission.refuse_if_busy(served)
        async with Generation(service, served, inputs) as generation:
            async for payload in workers_ai_payloads(generation, trace):
                if "usage" in payload:  # the last payload
                    payload["done"] = True
                await _send(websocket, payload)
    except RecursionError as error:  # a RuntimeError, but never the sign of a socket gone
        await _send_error(websocket, error)
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the socket is gone; leaving the loop closed the generation and freed its blocks
    except Exception as error:  # refused (bad input, queue full) or failed: this generation only
        await _send_error(websocket, error)


async def _send_error(websocket: WebSocket, error: Exception) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await _send(websocket, {**error_payload(error), "done": True})


async def _send(websocket: WebSocket, payload: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

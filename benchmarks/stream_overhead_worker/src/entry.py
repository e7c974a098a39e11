"""Relays env.AI.run's token stream to a WebSocket client: each SSE event's payload becomes one text frame.

A frame of inputs in, `{"response": ...}` frames out (with the backend's `emitted_ns` kept, since
the request asks for tracing), then the `[DONE]` marker as its own frame.
"""

import asyncio
import json

from js import WebSocketPair
from workers import Response, WorkerEntrypoint

MODEL = "@cf/edgewise/tiny-shakespeare"
TRACE = {"extraHeaders": {"x-edgewise-trace": "1"}}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            return Response("Expected Upgrade: websocket", status=426)
        client, server = WebSocketPair.new().object_values()
        server.accept()
        tasks = set()

        def on_message(event):
            task = asyncio.ensure_future(self.relay(server, json.loads(event.data)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def on_close(event):
            for task in tasks:
                task.cancel()  # the client left: closing the stream aborts the generation
            server.close(1000, "bye")

        server.addEventListener("message", on_message)
        server.addEventListener("close", on_close)
        return Response(None, status=101, web_socket=client)

    async def relay(self, server, inputs):
        try:
            stream = await self.env.AI.run(MODEL, {**inputs, "stream": True}, TRACE)
        except Exception as error:
            server.send(json.dumps({"error": str(error)}))
            return
        pending = b""
        async for chunk in stream:
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                server.send(event[len(b"data: "):].decode())

"""{{name}}: a WebSocket echo server. Connect with e.g. `python -m websockets ws://localhost:8787/`."""

from js import WebSocketPair
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            return Response("Expected a WebSocket upgrade request", status=426)
        client, server = WebSocketPair.new().object_values()
        server.accept()
        server.addEventListener("message", lambda event: server.send(event.data))
        return Response(None, status=101, web_socket=client)

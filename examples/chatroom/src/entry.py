"""A chat room per name: one Durable Object per room holds its sockets (hibernating) and its history.

GET /api/room/<name>/websocket joins the room; GET /api/room/<name>/history returns its last messages.
The page in public/ is served as a static asset.
"""

import json
from urllib.parse import urlparse

from js import WebSocketPair
from workers import DurableObject, Response, WorkerEntrypoint

HISTORY = 50  # messages kept per room


class ChatRoom(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, name TEXT, text TEXT, at INTEGER)")

    async def fetch(self, request):
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            return Response("Expected Upgrade: websocket", status=426)
        client, server = WebSocketPair.new().object_values()
        self.ctx.acceptWebSocket(server)  # hibernatable: the room may be evicted between messages
        server.serializeAttachment({"name": None})
        for row in self.recent():
            server.send(json.dumps(row))
        return Response(None, status=101, web_socket=client)

    def recent(self):
        rows = self.ctx.storage.sql.exec(
            "SELECT name, text, at FROM messages ORDER BY id DESC LIMIT ?", HISTORY).toArray()
        return [dict(row) for row in reversed(rows)]

    async def history(self):
        return self.recent()

    async def webSocketMessage(self, ws, message):
        data = json.loads(message)
        session = ws.deserializeAttachment() or {}
        if "join" in data:
            ws.serializeAttachment({"name": str(data["join"])[:32]})
            self.broadcast({"name": None, "text": f"{data['join']} joined", "at": None})
            return
        if not session.get("name"):
            ws.send(json.dumps({"error": "send {\"join\": name} first"}))
            return
        row = {"name": session["name"], "text": str(data.get("text", ""))[:1000], "at": data.get("at")}
        self.ctx.storage.sql.exec("INSERT INTO messages (name, text, at) VALUES (?, ?, ?)",
                                  row["name"], row["text"], row["at"])
        self.broadcast(row)

    async def webSocketClose(self, ws, code, reason, wasClean):
        name = (ws.deserializeAttachment() or {}).get("name")
        ws.close(code, "bye")
        if name:
            self.broadcast({"name": None, "text": f"{name} left", "at": None})

    def broadcast(self, row):
        text = json.dumps(row)
        for socket in self.ctx.getWebSockets():
            try:
                socket.send(text)
            except Exception:
                pass  # a socket closing right now; its webSocketClose follows


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = urlparse(request.url).path.strip("/").split("/")
        if len(parts) == 4 and parts[:2] == ["api", "room"]:
            room = self.env.CHAT_ROOM.getByName(parts[2])
            if parts[3] == "websocket":
                return await room.fetch(request)
            if parts[3] == "history":
                return Response.json(await room.history())
        return Response("Not found", status=404)

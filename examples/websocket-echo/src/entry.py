"""A WebSocket echo server on /ws, with a small browser client on GET /."""

from urllib.parse import urlparse

from js import WebSocketPair
from workers import Response, WorkerEntrypoint

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>WebSocket echo</title>
<form id="form"><input id="text" value="hello edge" autofocus> <button>Send</button></form>
<pre id="log"></pre>
<script>
  const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
  const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws");
  ws.onopen = () => log("connected");
  ws.onmessage = (event) => log("< " + event.data);
  ws.onclose = (event) => log("closed (" + event.code + ")");
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();
    const text = document.getElementById("text").value;
    ws.send(text);
    log("> " + text);
  };
</script>
"""


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/ws":
            return self.upgrade(request)
        if path == "/":
            return Response(PAGE, headers={"content-type": "text/html;charset=UTF-8"})
        return Response("Not found", status=404)

    def upgrade(self, request):
        if (request.headers.get("upgrade") or "").lower() != "websocket":
            return Response("Expected Upgrade: websocket", status=426, headers={"upgrade": "websocket"})
        client, server = WebSocketPair.new().object_values()
        server.accept()

        def echo(event):
            server.send(event.data)

        def close(event):
            server.close(1000, "bye")  # completes the closing handshake the client started

        server.addEventListener("message", echo)
        server.addEventListener("close", close)
        return Response(None, status=101, web_socket=client)

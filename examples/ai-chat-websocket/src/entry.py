"""Chat over a WebSocket on /ws: each frame asks env.AI.run for a streamed reply, sent back a frame per piece.

The client sends {"prompt": "..."} or {"messages": [...]} (with max_tokens, temperature or seed
if it likes), or plain text, taken as the prompt. The Worker answers {"response": "..."} for each
piece of text, then {"done": true, "usage": {...}}; a refused or failed request is one
{"error": "..."} frame, and the connection stays open. Frames are answered in order, one at a time.
"""

import asyncio
import json
from pathlib import Path
from urllib.parse import urlparse

from js import WebSocketPair
from workers import Response, WorkerEntrypoint

from sse import DONE, EventParser, StreamError, error_text

MODEL = "@cf/meta/llama-3.1-8b-instruct"
SETTINGS = ("max_tokens", "temperature", "seed")  # what a client may choose besides the prompt
OPEN = 1  # WebSocket.readyState
PAGE = (Path(__file__).parent / "index.html").read_text()


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
        session = ChatSession(server, self.env.AI)
        server.addEventListener("message", session.on_message)
        server.addEventListener("close", session.on_close)
        return Response(None, status=101, web_socket=client)


class ChatSession:
    """One connection: for each frame in, the model's reply out, streamed."""

    def __init__(self, socket, ai):
        self.socket = socket
        self.ai = ai
        self.turn = asyncio.Lock()  # replies never interleave: each frame waits for the one before

    async def on_message(self, event):
        async with self.turn:
            try:
                await self.answer(parse_request(event.data))
            except Exception as error:  # a bad frame, or the model refused (InferenceUpstreamError) or failed
                self.send({"error": str(error)})

    def on_close(self, event):
        self.socket.close(1000, "bye")  # completes the closing handshake the client started

    async def answer(self, inputs):
        stream = await self.ai.run(MODEL, {**inputs, "stream": True})
        parser = EventParser()
        usage = None
        async for chunk in stream:
            for data in parser.feed(chunk):
                if data == DONE:
                    self.send({"done": True, "usage": usage})
                    return
                if "error" in data:
                    raise StreamError(error_text(data))
                usage = data.get("usage", usage)
                if data.get("response") and not self.send({"response": data["response"]}):
                    return  # the client left: dropping the stream stops the generation
        raise StreamError("the model's stream ended before [DONE]: the answer is cut off")

    def send(self, frame):
        """Whether the frame went out (False once the client has closed)."""
        if self.socket.readyState != OPEN:
            return False
        self.socket.send(json.dumps(frame))
        return True


def parse_request(data):
    """The model's inputs for one frame."""
    if not isinstance(data, str):
        raise ValueError('send text frames: {"prompt": "..."}, {"messages": [...]} or a plain prompt')
    if not data.lstrip().startswith("{"):
        return {"prompt": data}
    try:
        request = json.loads(data)
    except ValueError as error:
        raise ValueError(f"the frame is not JSON ({error})") from None
    inputs = {key: request[key] for key in SETTINGS if key in request}
    if "messages" in request:
        return {**inputs, "messages": request["messages"]}
    if "prompt" in request:
        return {**inputs, "prompt": request["prompt"]}
    raise ValueError('send {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}')

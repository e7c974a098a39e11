"""Chat with Workers AI: a chat page at GET /, and POST /api/chat, which streams the model's reply as SSE.

POST /api/chat {"messages": [{"role": "user", "content": "Hi"}]} relays env.AI.run's event stream
as it comes; with "stream": false the reply is the model's JSON ({"response", "usage"}).
"max_tokens", "temperature" and "seed" in the body are passed on to the model.
"""

import json
from pathlib import Path
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint

MODEL = "@cf/meta/llama-3.1-8b-instruct"
SYSTEM_PROMPT = "You are a friendly assistant. Answer briefly."
SETTINGS = ("max_tokens", "temperature", "seed")  # what a client may choose besides the conversation
ROLES = ("system", "user", "assistant")
PAGE = (Path(__file__).parent / "index.html").read_text()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/" and request.method in ("GET", "HEAD"):
            return Response(PAGE, headers={"content-type": "text/html;charset=UTF-8"})
        if path == "/api/chat":
            if request.method != "POST":
                return Response('POST {"messages": [...]} to chat.', status=405, headers={"allow": "POST"})
            return await self.chat(request)
        return Response("Not found", status=404)

    async def chat(self, request):
        try:
            body = await request.json()
        except ValueError:
            return error_response('the body must be JSON: {"messages": [{"role": "user", "content": "..."}]}', 400)
        messages = body.get("messages") if isinstance(body, dict) else None
        problem = check_messages(messages)
        if problem:
            return error_response(problem, 400)
        stream = body.get("stream", True) is not False
        inputs = {key: body[key] for key in SETTINGS if key in body}
        inputs.update(messages=with_system_prompt(messages), stream=stream)
        try:
            result = await self.env.AI.run(MODEL, inputs)
        except Exception as failure:  # InferenceUpstreamError: "<code>: <message>"
            return error_response(str(failure), 502)
        if stream:
            return Response(result, headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        return Response.json(result)


def check_messages(messages):
    """What is wrong with the conversation, or None."""
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list of {"role", "content"}'
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f'each message needs a "role" out of {", ".join(ROLES)}: {json.dumps(message)[:80]}'
        if not isinstance(message.get("content"), str):
            return f'each message needs a "content" string: {json.dumps(message)[:80]}'
    return None


def with_system_prompt(messages):
    if messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": SYSTEM_PROMPT}, *messages]


def error_response(message, status):
    return Response.json({"error": message}, status=status)

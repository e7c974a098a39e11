"""{{name}}: chat with Workers AI. `curl -N localhost:8787 -d '{"message": "Hi!"}'` streams the reply as SSE."""

from workers import Response, WorkerEntrypoint

MODEL = "@cf/meta/llama-3.1-8b-instruct"
SYSTEM_PROMPT = "You are a friendly assistant. Answer briefly."


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.method != "POST":
            return Response('POST {"message": "..."} to chat.', status=405, headers={"allow": "POST"})
        message = (await request.json()).get("message", "")
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": message}]
        stream = await self.env.AI.run(MODEL, {"messages": messages, "stream": True})
        return Response(stream, headers={"content-type": "text/event-stream"})

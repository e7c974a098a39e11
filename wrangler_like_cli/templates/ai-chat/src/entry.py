"""{{name}}: a chat page at GET /, and POST /api/chat, which streams a Workers AI reply as SSE.

POST /api/chat {"messages": [{"role": "user", "content": "Hi"}]} relays env.AI.run's event stream
as it comes; with "stream": false the reply is the model's JSON ({"response", "usage"}).
"max_tokens", "temperature" and "seed" in the body are passed on to the model.
"""

import json
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint

MODEL = "@cf/meta/llama-3.1-8b-instruct"
SYSTEM_PROMPT = "You are a friendly assistant. Answer briefly."
SETTINGS = ("max_tokens", "temperature", "seed")  # what a client may choose besides the conversation
ROLES = ("system", "user", "assistant")


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


# The chat page: plain HTML and JavaScript, nothing fetched from elsewhere (examples/ai-chat keeps it in index.html).
PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Workers AI chat</title>
<style>
  body { font: 16px/1.45 system-ui, sans-serif; max-width: 44rem; margin: 0 auto; padding: 1rem; }
  #messages { display: flex; flex-direction: column; gap: .5rem; margin-bottom: 1rem; }
  .bubble { padding: .5rem .75rem; border-radius: .75rem; white-space: pre-wrap; max-width: 85%; }
  .user { align-self: flex-end; background: #f6821f; color: #fff; }
  .assistant { align-self: flex-start; background: #eee; }
  .assistant:empty::after { content: "…"; }
  .error { align-self: stretch; background: #fde8e8; color: #9b1c1c; }
  form { display: flex; gap: .5rem; }
  #prompt { flex: 1; font: inherit; padding: .5rem; }
  small { color: #777; }
</style>
</head>
<body data-state="idle">
<h1>Workers AI chat</h1>
<div id="messages"></div>
<form id="form">
  <input id="prompt" placeholder="Say something" autocomplete="off" autofocus>
  <button id="send" type="submit">Send</button>
</form>
<p><small>Each reply streams from <code>POST /api/chat</code>. Settings come from the address:
  <code>?max_tokens=64&amp;temperature=0</code>.</small></p>
<script>
  "use strict";
  const conversation = [];  // {role, content}, sent whole with every question
  const settings = Object.fromEntries(  // max_tokens, temperature and seed are numbers
    [...new URLSearchParams(location.search)].map(([key, value]) => [key, Number(value)]));
  const $ = (id) => document.getElementById(id);

  function bubble(kind, text) {
    const element = document.createElement("div");
    element.className = "bubble " + kind;
    element.textContent = text;
    $("messages").append(element);
    element.scrollIntoView({block: "end"});
    return element;
  }

  // Calls onText with each piece of text of a Workers AI event stream; returns at [DONE].
  async function readEvents(body, onText) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) throw new Error("the stream ended before [DONE]: the answer is cut off");
      buffer += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") { reader.cancel(); return; }
          const payload = JSON.parse(data);
          if (payload.error) {
            const {code, message} = payload.error;
            throw new Error(code ? code + ": " + message : message || String(payload.error));
          }
          if (payload.response) onText(payload.response);
        }
      }
    }
  }

  async function errorText(reply) {
    const text = await reply.text();
    try { return JSON.parse(text).error || text; } catch { return text || reply.status + " " + reply.statusText; }
  }

  async function ask(question) {
    conversation.push({role: "user", content: question});
    bubble("user", question);
    const answer = bubble("assistant", "");
    document.body.dataset.state = "streaming";
    try {
      const reply = await fetch("/api/chat", {
        method: "POST",
        headers: {"content-type": "application/json"},
        body: JSON.stringify({...settings, messages: conversation}),
      });
      if (!reply.ok) throw new Error(await errorText(reply));
      await readEvents(reply.body, (text) => {
        answer.textContent += text;
        answer.scrollIntoView({block: "end"});
      });
      conversation.push({role: "assistant", content: answer.textContent});
      document.body.dataset.state = "done";
    } catch (error) {
      conversation.pop();  // the question goes unanswered: ask it again later
      if (!answer.textContent) answer.remove();
      bubble("error", String(error.message || error));
      document.body.dataset.state = "error";
    }
  }

  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const question = $("prompt").value.trim();
    if (!question || document.body.dataset.state === "streaming") return;
    $("prompt").value = "";
    $("send").disabled = true;
    try { await ask(question); } finally { $("send").disabled = false; $("prompt").focus(); }
  });
</script>
</body>
</html>
"""

"""A shop assistant on Workers AI tool calling: the model looks orders up in D1, then answers.

POST /ask {"question": "Which orders are still pending?"} runs the agent loop: the model is given
the tool `find_orders` (Workers AI's traditional form, {name, description, parameters}); each call
it makes is run against the D1 table `orders` (migrations/) and its result goes back to the model
as a {"role": "tool"} message, until the model answers in text. The reply is
{"answer", "steps": [{"tool", "arguments", "result"}]}: the answer and every call on the way to it.
"""

import json
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint

MODEL = "@cf/meta/llama-3.1-8b-instruct"
MAX_STEPS = 3  # model calls per question: a first forced tool call, then until it answers in text
MAX_TOKENS = 64  # per model call: a call's arguments or a short answer
MAX_QUESTION_CHARS = 200
MAX_ORDERS = 3  # per lookup: the results go back into the model's context
STATUSES = ["pending", "shipped", "delivered", "cancelled"]
SYSTEM_PROMPT = "You are the shop's assistant. Look orders up with find_orders, then answer briefly."
TOOLS = [
    {
        "name": "find_orders",
        "description": "List the shop's orders in one status, newest first.",
        "parameters": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": STATUSES, "description": "The orders' status"},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ORDERS,
                          "description": f"How many orders to list (at most {MAX_ORDERS})"},
            },
            "required": ["status"],
            "additionalProperties": False,
        },
    },
]
SETUP_HINT = ("set up the database first: wrangler d1 migrations apply DB --local "
              "(edgewise d1 migrations apply DB --local)")


class BadRequest(Exception):
    """The question is missing or malformed: a 400."""


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path != "/ask":
            return error_response('POST /ask {"question": "..."}', 404)
        if request.method != "POST":
            return Response('POST {"question": "..."} to ask.', status=405, headers={"allow": "POST"})
        try:
            question = read_question(await request.text())
            return Response.json(await self.ask(question))
        except BadRequest as problem:
            return error_response(str(problem), 400)
        except Exception as failure:  # the model's refusal ("<code>: <message>"), or D1's
            message = str(failure)
            if "no such table: orders" in message:
                message = f"{message}: {SETUP_HINT}"
            return error_response(message, 502)

    async def ask(self, question):
        """The agent loop: the model calls tools until it answers in text (or MAX_STEPS calls are spent)."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        steps = []
        for step in range(MAX_STEPS):
            result = await self.env.AI.run(MODEL, {
                "messages": messages,
                "tools": TOOLS,
                "tool_choice": tool_choice(step),
                "parallel_tool_calls": False,
                "max_tokens": MAX_TOKENS,
            })
            calls = [{"name": call["name"], "arguments": as_object(call["arguments"])}
                     for call in result.get("tool_calls") or []]
            if not calls:
                return {"answer": answer_text(result.get("response")), "steps": steps}
            messages.append({"role": "assistant", "content": answer_text(result.get("response")), "tool_calls": calls})
            for call in calls:
                output = await self.run_tool(call["name"], call["arguments"])
                steps.append({"tool": call["name"], "arguments": call["arguments"], "result": output})
                messages.append({"role": "tool", "name": call["name"], "content": tool_text(output)})
        return {"answer": "", "steps": steps}  # unreachable: the last step allows no call

    async def run_tool(self, name, arguments):
        """The tool's result, or {"error"} that tells the model what to fix."""
        if name != "find_orders":
            return {"error": f"there is no tool {name!r}; use find_orders"}
        if not arguments:
            return {"error": 'the arguments must be a JSON object such as {"status": "pending"}'}
        return await self.find_orders(arguments)

    async def find_orders(self, arguments):
        status, limit = arguments.get("status"), arguments.get("limit", MAX_ORDERS)
        unknown = sorted(set(arguments) - {"status", "limit"})
        if unknown:
            return {"error": f"find_orders takes status and limit, not {', '.join(unknown)}"}
        if status not in STATUSES:
            return {"error": f"status must be one of {', '.join(STATUSES)}"}
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_ORDERS:
            return {"error": f"limit must be a whole number from 1 to {MAX_ORDERS}"}
        statement = self.env.DB.prepare(
            "SELECT id, customer, item, placed_at FROM orders WHERE status = ? "
            "ORDER BY placed_at DESC, id DESC LIMIT ?").bind(status, limit)
        return {"status": status, "orders": (await statement.all())["results"]}


def tool_choice(step):
    """The first call must look something up; the last must answer; in between the model decides."""
    if step == 0:
        return "required"
    return "none" if step == MAX_STEPS - 1 else "auto"


def as_object(arguments):
    """A call's arguments as a dict ({} when they are not a JSON object): Workers AI sends an object,
    some models write JSON text."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return {}
    return arguments if isinstance(arguments, dict) else {}


def tool_text(output):
    """A tool's result as the model reads it: short lines rather than JSON, which costs small models
    two or three times the tokens of their context."""
    if "error" in output:
        return f"Error: {output['error']}"
    if not output["orders"]:
        return f"No {output['status']} orders."
    return "\n".join(f"Order {order['id']}: {order['item']} for {order['customer']}, placed {order['placed_at']}"
                     for order in output["orders"])


def read_question(body):
    try:
        sent = json.loads(body)
    except ValueError:
        raise BadRequest('the body must be JSON: {"question": "..."}') from None
    question = sent.get("question") if isinstance(sent, dict) else None
    if not isinstance(question, str) or not question.strip():
        raise BadRequest('send {"question": "..."} with a non-empty question')
    if len(question) > MAX_QUESTION_CHARS:
        raise BadRequest(f"the question has {len(question)} characters; ask in at most {MAX_QUESTION_CHARS}")
    return question.strip()


def answer_text(response):
    """The model's text as a string, whatever it wrote (or did not)."""
    if response is None:
        return ""
    return response.strip() if isinstance(response, str) else json.dumps(response)


def error_response(message, status):
    return Response.json({"error": message}, status=status)

"""Structured extraction with Workers AI JSON mode: a customer's message in, a support ticket out.

POST /extract with the message as the body (plain text, or JSON {"text": "..."}) asks the model
for a ticket under `response_format: {"type": "json_schema", "json_schema": TICKET_SCHEMA}` and
answers the object the model returned, e.g.
{"customer": "Maria Gomez", "product": "Trail Pack 30", "category": "shipping", "urgency": 4,
 "wants_refund": true, "order_id": 1042}.
GET /schema answers TICKET_SCHEMA.
"""

import json
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint

MODEL = "@cf/meta/llama-3.1-8b-instruct"
MAX_TEXT_CHARS = 1000
MAX_TOKENS = 256
SYSTEM_PROMPT = "Extract the support ticket from the customer's message."
TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 40, "description": "The customer's name"},
        "product": {"type": "string", "maxLength": 40, "description": "The product the message is about"},
        "category": {"type": "string", "enum": ["bug", "billing", "shipping", "question", "feature_request"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5, "description": "1 (whenever) to 5 (now)"},
        "wants_refund": {"type": "boolean"},
        "order_id": {"type": ["integer", "null"], "minimum": 1, "maximum": 99999999,
                     "description": "The order number, if the message gives one"},
    },
    "required": ["customer", "product", "category", "urgency", "wants_refund", "order_id"],
    "additionalProperties": False,
}
USAGE = 'POST /extract with the message as the body (text, or JSON {"text": "..."}); GET /schema'


class BadRequest(Exception):
    """The message is missing or malformed: a 400."""


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/schema" and request.method == "GET":
            return Response.json(TICKET_SCHEMA)
        if path != "/extract":
            return error_response(USAGE, 404)
        if request.method != "POST":
            return Response(USAGE + "\n", status=405, headers={"allow": "POST"})
        try:
            text = read_text(await request.text(), request.headers.get("content-type") or "")
            return Response.json(await self.extract(text))
        except BadRequest as problem:
            return error_response(str(problem), 400)
        except Exception as failure:  # the model's refusal: "<code>: <message>"
            return error_response(str(failure), 502)

    async def extract(self, text):
        result = await self.env.AI.run(MODEL, {
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
            "response_format": {"type": "json_schema", "json_schema": TICKET_SCHEMA},
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        })
        ticket = result["response"]
        if isinstance(ticket, str):  # a model that answers JSON mode in text
            try:
                ticket = json.loads(ticket)
            except ValueError:
                raise RuntimeError(f"the model's answer is not JSON: {ticket[:200]}") from None
        return ticket


def read_text(body, content_type):
    """The customer's message: the body itself, or its "text" when the body is JSON."""
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            sent = json.loads(body)
        except ValueError:
            raise BadRequest('the body is not JSON: send {"text": "..."}, or the message as plain text') from None
        body = sent.get("text") if isinstance(sent, dict) else None
        if not isinstance(body, str):
            raise BadRequest('send {"text": "..."} with the message as a string')
    if not body.strip():
        raise BadRequest("the message is empty: send the customer's message as the body")
    if len(body) > MAX_TEXT_CHARS:
        raise BadRequest(f"the message has {len(body)} characters; send at most {MAX_TEXT_CHARS}")
    return body.strip()


def error_response(message, status):
    return Response.json({"error": message}, status=status)

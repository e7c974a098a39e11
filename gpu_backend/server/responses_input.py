"""A Responses-style ``input`` list as chat messages, for ``POST /v1/responses`` and the run route alike.

OpenAI's Responses API (and Workers AI's ``instructions`` / ``input`` form) send the conversation
as items: messages (``{role, content}``, with or without ``type: "message"``, content as a string
or ``input_text`` / ``output_text`` parts), ``function_call`` items (the model's earlier calls) and
``function_call_output`` items (their results). ``chat_messages`` turns them into the chat
messages the chat template renders: a call joins the assistant turn before it (or starts one), a
result becomes a ``role: "tool"`` message. Message content and tool calls are checked afterwards
by ``schemas``, as every route's messages are.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import BadInputError

Message = dict[str, Any]
# The Responses roles; "tool" too, for a chat-style tool message ({role, content, tool_call_id}).
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system", "tool": "tool"}


def chat_messages(items: list[Any], field: str = "input") -> list[Message]:
    """The chat messages of a non-empty list of Responses input items; a 400 names the bad item."""
    messages: list[Message] = []
    for index, item in enumerate(items):
        _add_item(messages, item, f"{field}[{index}]", field)
    return messages


def _add_item(messages: list[Message], item: Any, where: str, field: str) -> None:
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind == "message":
        messages.append(_message(item, where, field))
    elif kind == "function_call":
        call = {"id": _string(item, "call_id", where, field), "type": "function",
                "function": {"name": _string(item, "name", where, field), "arguments": _arguments(item, where, field)}}
        if messages and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where, field),
                         "content": output if isinstance(output, str) else _output_text(output, where, field)})
    else:
        raise BadInputError(f"'{where}' must be a message {{\"role\", \"content\"}} or an item of type \"message\", "
                            f"\"function_call\" or \"function_call_output\", got "
                            f"{kind if kind is not None else type(item).__name__!r}", param=field)


def _message(item: dict[str, Any], where: str, field: str) -> Message:
    """The item as a chat message (its content and other keys are checked with every route's messages)."""
    role = item.get("role")
    if role not in _ROLES:
        raise BadInputError(f"'{where}.role' must be \"user\", \"assistant\", \"system\" or \"developer\", got "
                            f"{role!r}", param=field)
    message = {key: value for key, value in item.items() if key not in ("type", "id", "status")}
    message["role"] = _ROLES[role]
    return message


def _output_text(parts: Any, where: str, field: str) -> str:
    """A function call's output given as ``input_text`` parts: their text."""
    if isinstance(parts, list) and all(isinstance(part, dict) and part.get("type") in ("input_text", "output_text")
                                       and isinstance(part.get("text"), str) for part in parts):
        return "".join(part["text"] for part in parts)
    raise BadInputError(f"'{where}.output' must be a string or a list of {{\"type\": \"input_text\", \"text\": ...}} "
                        f"parts: this backend's models read text only", param=field)


def _string(item: dict[str, Any], key: str, where: str, field: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadInputError(f"'{where}.{key}' must be a non-empty string", param=field)
    return value


def _arguments(item: dict[str, Any], where: str, field: str) -> str:
    arguments = item.get("arguments")
    try:
        if isinstance(arguments, str) and isinstance(json.loads(arguments), dict):
            return arguments
    except ValueError:
        pass
    raise BadInputError(f"'{where}.arguments' must be a JSON object as text, such as \"{{\\\"city\\\": "
                        f"\\\"Paris\\\"}}\"", param=field)

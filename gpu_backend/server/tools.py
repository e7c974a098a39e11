"""Tool-calling inputs: the tools a request offers, which one it must call, and the calls of earlier turns.

Workers AI's traditional tools are ``{name, description, parameters}``; OpenAI's (which Workers AI
takes too) are ``{"type": "function", "function": {name, description, parameters, strict}}``.
Both become one ``Tool``, which the chat template sees in OpenAI's shape, as transformers passes
``tools=``. ``tool_choice`` is ``auto``, ``none``, ``required`` or ``{"type": "function",
"function": {"name": ...}}``. Assistant messages' ``tool_calls`` come with ``arguments`` as a JSON
string (OpenAI) or an object (Workers AI); templates get an object, as transformers documents.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import BadInputError

TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
ChoiceMode = Literal["auto", "none", "required", "function"]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # the JSON schema of the arguments object

    def for_template(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = "auto"
    name: str | None = None  # the function to call, with mode "function"

    @property
    def is_forced(self) -> bool:
        """The answer must be a call (the grammar makes it one)."""
        return self.mode in ("required", "function")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    arguments_text: str | None = None  # the arguments as the model wrote them (OpenAI answers that text)

    @property
    def arguments_json(self) -> str:
        return self.arguments_text if self.arguments_text is not None else json.dumps(self.arguments,
                                                                                      ensure_ascii=False)

    def workers_ai(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments_json}}


def parse_tools(value: Any) -> tuple[Tool, ...]:
    if value in (None, []):
        return ()
    if not isinstance(value, list):
        raise BadInputError("'tools' must be a list of {name, description, parameters} objects", param="tools")
    tools = tuple(_tool(item, f"tools[{index}]") for index, item in enumerate(value))
    names = [tool.name for tool in tools]
    for name in names:
        if names.count(name) > 1:
            raise BadInputError(f"'tools' has two tools named {name!r}: give each tool its own name", param="tools")
    return tools


def _tool(item: Any, where: str) -> Tool:
    if isinstance(item, dict) and item.get("type", "function") == "function" and isinstance(item.get("function"), dict):
        item, where = item["function"], f"{where}.function"
    elif isinstance(item, dict) and item.get("type") not in (None, "function"):
        raise BadInputError(f"'{where}.type' must be \"function\", got {item.get('type')!r}", param="tools")
    if not isinstance(item, dict):
        raise BadInputError(f"'{where}' must be an object {{name, description, parameters}}", param="tools")
    name = item.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise BadInputError(f"'{where}.name' must be 1 to 64 letters, digits, '_', '.' or '-', got {name!r}",
                            param="tools")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise BadInputError(f"'{where}.description' must be a string", param="tools")
    return Tool(name, description, _parameters(item.get("parameters"), f"{where}.parameters"))


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return dict(EMPTY_PARAMETERS)
    if not isinstance(value, dict):
        raise BadInputError(f"'{where}' must be a JSON schema object such as {{\"type\": \"object\", "
                            f"\"properties\": {{...}}}}, got {type(value).__name__}", param="tools")
    kind = value.get("type", "object")
    if kind != "object":
        raise BadInputError(f"'{where}.type' must be \"object\" (a call's arguments are an object), got {kind!r}",
                            param="tools")
    if not isinstance(value.get("properties", {}), dict):
        raise BadInputError(f"'{where}.properties' must be an object mapping names to schemas", param="tools")
    if not isinstance(value.get("required", []), list):
        raise BadInputError(f"'{where}.required' must be a list of property names", param="tools")
    return value


def parse_tool_choice(value: Any, tools: tuple[Tool, ...]) -> ToolChoice:
    if value is None:
        return ToolChoice("auto")
    if not tools:
        raise BadInputError("'tool_choice' needs 'tools': send the tools to choose from, or remove 'tool_choice'",
                            param="tool_choice")
    if value in ("auto", "none", "required"):
        return ToolChoice(value)
    name = _chosen_name(value)
    if name not in {tool.name for tool in tools}:
        raise BadInputError(f"'tool_choice' names {name!r}, which is not in 'tools' (they are: "
                            f"{', '.join(tool.name for tool in tools)})", param="tool_choice")
    return ToolChoice("function", name)


def _chosen_name(value: Any) -> str:
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(function, dict):
        raise BadInputError("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                            f"\"function\": {{\"name\": ...}}}}, got {value!r}", param="tool_choice")
    if not isinstance(function.get("name"), str):
        raise BadInputError("'tool_choice.function.name' must be the name of one of 'tools'", param="tool_choice")
    return function["name"]


def message_tool_calls(value: Any, where: str, field: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` as templates read them: ``{id, type, function: {name,
    arguments: object}}`` (from OpenAI's form or Workers AI's ``{name, arguments}``)."""
    if not isinstance(value, list):
        raise BadInputError(f"'{where}.tool_calls' must be a list of calls", param=field)
    calls = []
    for index, call in enumerate(value):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadInputError(f"'{at}' must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}} "
                                f"or {{\"name\", \"arguments\"}}", param=field)
        entry = {"type": "function",
                 "function": {"name": function["name"], "arguments": _arguments(function.get("arguments"), at, field)}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls


def _arguments(value: Any, where: str, field: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadInputError(f"'{where}' arguments must be a JSON object (as text or as an object)",
                                param=field) from None
    if not isinstance(value, dict):
        raise BadInputError(f"'{where}' arguments must be a JSON object", param=field)
    return value

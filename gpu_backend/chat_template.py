"""Chat templates: find a checkpoint's Jinja templates and render conversations the way transformers does.

Templates come from the Hub, so they run in Jinja's immutable sandbox with the environment of
transformers' `apply_chat_template`: `trim_blocks`, `lstrip_blocks`, `loopcontrols`, a no-op
`{% generation %}` block, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text,
and `dict`/`namespace` that cannot reach Python internals.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from .errors import CheckpointError, InvalidRequestError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
ADDITIONAL_CHAT_TEMPLATES_DIR = "additional_chat_templates"
DEFAULT_TEMPLATE_NAME = "default"
TOOL_USE_TEMPLATE_NAME = "tool_use"
# Older names for a message's reasoning; templates read `reasoning_content` (gpt-oss reads `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

Message = Mapping[str, Any]


def load_chat_templates(folder: Path, tokenizer_config: Mapping[str, Any]) -> dict[str, str]:
    """Name -> template source; template files in the folder take priority over tokenizer_config.json."""
    from_files = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        from_files[DEFAULT_TEMPLATE_NAME] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / ADDITIONAL_CHAT_TEMPLATES_DIR).is_dir():
        for path in sorted((folder / ADDITIONAL_CHAT_TEMPLATES_DIR).glob("*.jinja")):
            from_files[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if from_files:
        return from_files
    configured = tokenizer_config.get("chat_template")
    if configured is None:
        return {}
    if isinstance(configured, str):
        return {DEFAULT_TEMPLATE_NAME: configured}
    if isinstance(configured, list) and all(isinstance(t, dict) and {"name", "template"} <= t.keys()
                                            for t in configured):
        return {t["name"]: t["template"] for t in configured}
    raise CheckpointError(
        f"{folder / 'tokenizer_config.json'}: chat_template must be a string or a list of {{name, template}} objects"
    )


def select_template(templates: Mapping[str, str], has_tools: bool) -> str | None:
    """The template transformers would use: `tool_use` when tools are given and it exists, else `default`."""
    if has_tools and TOOL_USE_TEMPLATE_NAME in templates:
        return templates[TOOL_USE_TEMPLATE_NAME]
    if DEFAULT_TEMPLATE_NAME in templates:
        return templates[DEFAULT_TEMPLATE_NAME]
    return next(iter(templates.values())) if len(templates) == 1 else None


def render_chat_template(
    source: str,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with `source`; a template's `raise_exception` becomes InvalidRequestError."""
    if not messages:
        raise InvalidRequestError("the conversation is empty; send at least one message")
    template = _compile(source)
    variables = {**(special_tokens or {}), **kwargs}
    try:
        return template.render(
            messages=[_normalise_message(m) for m in messages],
            tools=None if tools is None else [dict(t) for t in tools],
            documents=None if documents is None else [dict(d) for d in documents],
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as exc:  # raise_exception(...) or a template that does not fit the input
        raise InvalidRequestError(f"the chat template rejected the conversation: {exc}") from exc


def _normalise_message(message: Message) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InvalidRequestError(f"chat messages must be objects, got {type(message).__name__}")
    # OpenAI clients send `content: null`, `tool_calls: null`; templates handle a missing key better.
    plain = {k: v for k, v in message.items() if v is not None}
    reasoning = next((plain[k] for k in _REASONING_FIELDS if k in plain), None)
    if reasoning is not None:
        plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
    return plain


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise CheckpointError(f"the model's chat template does not parse: {exc}") from exc


@functools.cache
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _SafeDict()
    env.globals["namespace"] = _SafeNamespace
    return env


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters, which would change what the model sees.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _SafeDict:
    """`dict(...)` for templates without exposing the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _SafeNamespace(jinja2.utils.Namespace):
    """Jinja's namespace, refusing underscore names so a template cannot reach CPython internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Jinja's signature trick, keeps namespace(self=...)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _SafeNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering keeps the body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Any) -> str:
        return caller()

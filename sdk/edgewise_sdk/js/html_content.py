"""What HTMLRewriter handlers receive: ``Element``, ``EndTag``, ``TextChunk``, ``Comment``, ``Doctype``, ``DocumentEnd``.

Each object only records what the handler asked for (attributes set, content before or after, removal); the
rewriter in ``html_rewriter.py`` reads those records when it writes the output. Inserted content is escaped as
text unless the handler passes ``{"html": True}`` (or ``html=True``), as on Cloudflare.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

from .html_tokens import StartTagToken

XHTML_NAMESPACE = "http://www.w3.org/1999/xhtml"
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
MATHML_NAMESPACE = "http://www.w3.org/1998/Math/MathML"
VOID_ELEMENTS = frozenset({
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img", "input",
    "keygen", "link", "meta", "param", "source", "track", "wbr",
})


def content_text(content: Any, options: Any, html_flag: bool | None) -> str:
    """``content`` as it goes into the output: escaped unless the options say it is HTML."""
    if not isinstance(content, str):
        raise TypeError(f"HTMLRewriter content must be a str, not {type(content).__name__}")
    if html_flag is None:
        html_flag = bool(options.get("html")) if isinstance(options, Mapping) else bool(getattr(options, "html", False))
    return content if html_flag else html.escape(content, quote=False)


class _Mutable:
    """``before``/``after``/``replace``/``remove``, shared by text chunks, comments and elements."""

    def __init__(self) -> None:
        self._before: list[str] = []
        self._after: list[str] = []
        self._replacement: str | None = None
        self._removed = False

    def before(self, content: str, options: Any = None, *, html: bool | None = None) -> Any:
        self._before.append(content_text(content, options, html))
        return self

    def after(self, content: str, options: Any = None, *, html: bool | None = None) -> Any:
        self._after.insert(0, content_text(content, options, html))  # the latest goes nearest, as in lol-html
        return self

    def replace(self, content: str, options: Any = None, *, html: bool | None = None) -> Any:
        self._replacement, self._removed = content_text(content, options, html), True
        return self

    def remove(self) -> Any:
        self._removed = True
        return self

    @property
    def removed(self) -> bool:
        return self._removed

    def _surround(self, own: str) -> str:
        middle = (self._replacement or "") if self._removed else own
        return "".join(self._before) + middle + "".join(self._after)


class TextChunk(_Mutable):
    """A piece of a text node as it streamed in; ``text`` is its source text (character references kept)."""

    def __init__(self, text: str, last_in_text_node: bool) -> None:
        super().__init__()
        self.text = text
        self.lastInTextNode = last_in_text_node  # noqa: N815 - JS name

    def output(self) -> str:
        return self._surround(self.text)


class Comment(_Mutable):
    """``<!--text-->``; setting ``text`` rewrites it."""

    def __init__(self, text: str, raw: str) -> None:
        super().__init__()
        self.text, self._original, self._raw = text, text, raw

    def output(self) -> str:
        return self._surround(self._raw if self.text == self._original else f"<!--{self.text}-->")


class Doctype:
    """``<!DOCTYPE name PUBLIC "publicId" "systemId">``, read only; absent parts are None."""

    def __init__(self, name: str | None, public_id: str | None, system_id: str | None) -> None:
        self.name, self.publicId, self.systemId = name, public_id, system_id  # noqa: N815 - JS names


class DocumentEnd:
    """Passed to ``onDocument``'s ``end`` handler: ``append`` adds content at the very end."""

    def __init__(self) -> None:
        self._appended: list[str] = []

    def append(self, content: str, options: Any = None, *, html: bool | None = None) -> DocumentEnd:
        self._appended.append(content_text(content, options, html))
        return self

    def output(self) -> str:
        return "".join(self._appended)


class EndTag:
    """An element's end tag, for the handlers given to ``element.onEndTag``; ``name`` may be set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._before: list[str] = []
        self._after: list[str] = []
        self._removed = False

    def before(self, content: str, options: Any = None, *, html: bool | None = None) -> EndTag:
        self._before.append(content_text(content, options, html))
        return self

    def after(self, content: str, options: Any = None, *, html: bool | None = None) -> EndTag:
        self._after.insert(0, content_text(content, options, html))
        return self

    def remove(self) -> EndTag:
        self._removed = True
        return self


class Element(_Mutable):
    """An element at its start tag. It is also the selector matcher's view of an open element."""

    def __init__(self, token: StartTagToken, child_index: int, type_index: int, namespace: str) -> None:
        super().__init__()
        self.name = token.name  # as parsed: what selectors match, whatever tagName becomes
        self.child_index, self.type_index = child_index, type_index
        self.namespaceURI = namespace  # noqa: N815 - JS name
        self._token = token
        self._tag_name = token.name
        self._attributes = [[name, "" if value is None else value] for name, value in token.attributes]
        self._attributes_changed = False
        self._prepend: list[str] = []
        self._append: list[str] = []
        self._inner: str | None = None
        self._tags_removed = False
        self.end_tag_handlers: list[Callable[[EndTag], Any]] = []
        self.content_handlers: list[Any] = []  # handler objects whose text/comments apply inside
        self.num_children = 0
        self.num_children_by_name: dict[str, int] = {}

    # --- what handlers read and set ---------------------------------------------------------------

    @property
    def tagName(self) -> str:  # noqa: N802 - JS name
        return self._tag_name

    @tagName.setter
    def tagName(self, name: str) -> None:  # noqa: N802 - JS name
        self._tag_name = str(name).lower()

    @property
    def attributes(self) -> list[list[str]]:
        return [list(pair) for pair in self._attributes]

    @property
    def canHaveContent(self) -> bool:  # noqa: N802 - JS name
        return not self.selfClosing and not (self.namespaceURI == XHTML_NAMESPACE and self.name in VOID_ELEMENTS)

    @property
    def selfClosing(self) -> bool:  # noqa: N802 - JS name
        return self._token.self_closing and self.namespaceURI != XHTML_NAMESPACE

    @property
    def removed(self) -> bool:
        return self._removed or self._tags_removed

    def attribute(self, name: str) -> str | None:
        return next((value for key, value in self._attributes if key == name), None)

    def getAttribute(self, name: str) -> str | None:  # noqa: N802 - JS name
        return self.attribute(str(name).lower())

    def hasAttribute(self, name: str) -> bool:  # noqa: N802 - JS name
        return self.getAttribute(name) is not None

    def setAttribute(self, name: str, value: str) -> Element:  # noqa: N802 - JS name
        name, value = str(name).lower(), str(value)
        for pair in self._attributes:
            if pair[0] == name:
                pair[1] = value
                break
        else:
            self._attributes.append([name, value])
        self._attributes_changed = True
        return self

    def removeAttribute(self, name: str) -> Element:  # noqa: N802 - JS name
        name = str(name).lower()
        kept = [pair for pair in self._attributes if pair[0] != name]
        self._attributes_changed |= len(kept) != len(self._attributes)
        self._attributes = kept
        return self

    def prepend(self, content: str, options: Any = None, *, html: bool | None = None) -> Element:
        if self.canHaveContent:
            self._prepend.insert(0, content_text(content, options, html))
        return self

    def append(self, content: str, options: Any = None, *, html: bool | None = None) -> Element:
        if self.canHaveContent:
            self._append.append(content_text(content, options, html))
        return self

    def setInnerContent(self, content: str, options: Any = None, *, html: bool | None = None) -> Element:  # noqa: N802
        if self.canHaveContent:
            self._inner, self._prepend, self._append = content_text(content, options, html), [], []
        return self

    def removeAndKeepContent(self) -> Element:  # noqa: N802 - JS name
        self._tags_removed = True
        return self

    def onEndTag(self, handler: Callable[[EndTag], Any]) -> None:  # noqa: N802 - JS name
        if not self.canHaveContent:
            raise TypeError(f"<{self.name}> has no end tag: onEndTag() is for elements that can have content")
        if not callable(handler):
            raise TypeError(f"onEndTag() takes a function, not {type(handler).__name__}")
        self.end_tag_handlers.append(handler)

    # --- what the rewriter reads ------------------------------------------------------------------

    @property
    def suppresses_content(self) -> bool:
        return self._removed or self._inner is not None

    def count_child(self, name: str) -> tuple[int, int]:
        self.num_children += 1
        self.num_children_by_name[name] = self.num_children_by_name.get(name, 0) + 1
        return self.num_children, self.num_children_by_name[name]

    def start_output(self) -> str:
        parts = list(self._before)
        if self._removed:
            parts.append(self._replacement or "")
        else:
            if not self._tags_removed:
                parts.append(self._start_tag())
            parts.extend(self._prepend)
            parts.append(self._inner or "")
        return "".join(parts)

    def end_output(self, end_token_raw: str | None, end_tag: EndTag | None) -> str:
        """What replaces the end tag (``end_token_raw``; None when the element ended implicitly)."""
        parts = [] if self._removed else list(self._append)
        if end_tag is not None:
            parts.extend(end_tag._before)
        if end_token_raw is not None and not self.removed and not (end_tag is not None and end_tag._removed):
            name = end_tag.name if end_tag is not None else self._tag_name
            parts.append(end_token_raw if name == self.name else f"</{name}>")
        if end_tag is not None:
            parts.extend(end_tag._after)
        parts.extend(self._after)
        return "".join(parts)

    def _start_tag(self) -> str:
        raw = self._token.raw
        if not self._attributes_changed and self._tag_name == self.name:
            return raw
        name = raw[1:1 + len(self.name)] if self._tag_name == self.name else self._tag_name  # keep the source's case
        attributes = "".join(
            f' {key}="{html.escape(value, quote=True)}"' if value or self._had_value(key) else f" {key}"
            for key, value in self._attributes
        )
        return f"<{name}{attributes}{' /' if self._token.self_closing else ''}>"

    def _had_value(self, name: str) -> bool:
        return any(key == name and value is not None for key, value in self._token.attributes) or \
            all(key != name for key, _ in self._token.attributes)

"""``HTMLRewriter``: Cloudflare's streaming HTML rewriter (``from js import HTMLRewriter``) on CPython.

``HTMLRewriter.new().on("a[href]", handlers).onDocument(handlers).transform(response)`` returns a new
Response whose body is rewritten chunk by chunk as the original streams in: each input chunk is tokenized
(``html_tokens.py``, on the standard library's incremental ``HTMLParser``), the handlers run (they may be
async), and what that chunk produced is sent on before the next one is read. Markup no handler changed goes out
exactly as it came in. Handlers are an object with methods (``element``, ``comments``, ``text``; for
``onDocument`` also ``doctype`` and ``end``) or a dict of callables, as Python Workers pass either.

Elements are tracked on a stack of open elements with HTML's common implied end tags (``<p>`` closed by a
block, ``<li>`` by the next ``<li>``, table rows and cells, void elements); it is not the full HTML tree
builder, which lol-html does not run either.
"""

from __future__ import annotations

import codecs
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from email.message import Message
from typing import Any

from edgewise_sdk.workers import Response
from edgewise_sdk.workers.response import NULL_BODY_STATUSES

from .css_selectors import Selector
from .html_content import (
    MATHML_NAMESPACE, SVG_NAMESPACE, XHTML_NAMESPACE, Comment, Doctype, DocumentEnd, Element, EndTag, TextChunk,
)
from .html_tokens import (
    CommentToken, DoctypeToken, EndTagToken, HtmlTokenizer, RawToken, StartTagToken, TextToken, Token, encode,
)

__all__ = ["HTMLRewriter"]

_ELEMENT_HANDLERS = ("element", "comments", "text")
_DOCUMENT_HANDLERS = ("doctype", "comments", "text", "end")
_SCOPE = frozenset({"applet", "caption", "html", "table", "td", "th", "marquee", "object", "template", "button"})
_CLOSES_P = frozenset({
    "address", "article", "aside", "blockquote", "center", "details", "dialog", "dir", "div", "dl", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr",
    "li", "dd", "dt", "main", "menu", "nav", "ol", "p", "pre", "section", "summary", "table", "ul",
})
# start tag -> (open elements it ends, elements that stop the search for them)
_IMPLIED_ENDS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "li": (frozenset({"li"}), frozenset({"ul", "ol"}) | _SCOPE),
    "dt": (frozenset({"dt", "dd"}), frozenset({"dl"}) | _SCOPE),
    "dd": (frozenset({"dt", "dd"}), frozenset({"dl"}) | _SCOPE),
    "option": (frozenset({"option"}), frozenset({"select", "datalist", "optgroup"})),
    "optgroup": (frozenset({"optgroup", "option"}), frozenset({"select"})),
    "tr": (frozenset({"tr"}), frozenset({"table", "tbody", "thead", "tfoot"})),
    "td": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "th": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "tbody": (frozenset({"tbody", "thead", "tfoot"}), frozenset({"table"})),
    "thead": (frozenset({"tbody", "thead", "tfoot"}), frozenset({"table"})),
    "tfoot": (frozenset({"tbody", "thead", "tfoot"}), frozenset({"table"})),
    "body": (frozenset({"head"}), frozenset({"html"})),
}


def _handler(handlers: Any, name: str) -> Callable[[Any], Any] | None:
    if isinstance(handlers, Mapping):
        function = handlers.get(name)
    else:
        function = getattr(handlers, name, None)
    return function if callable(function) else None


def _unwrap(handlers: Any) -> Any:
    # create_proxy(...) wraps the handler object; a proxied dict is read as the dict.
    unwrap = getattr(type(handlers), "unwrap", None)
    return unwrap(handlers) if callable(unwrap) else handlers


async def _call(function: Callable[[Any], Any], argument: Any) -> None:
    result = function(argument)
    if inspect.isawaitable(result):
        await result


def _check_handlers(handlers: Any, names: tuple[str, ...], method: str) -> Any:
    handlers = _unwrap(handlers)
    if not any(_handler(handlers, name) for name in names):
        raise TypeError(
            f"HTMLRewriter.{method}() needs handlers with at least one of {', '.join(names)}: an object with "
            f"those methods or a dict of callables, not {type(handlers).__name__}"
        )
    return handlers


def _charset(response: Response) -> str:
    message = Message()
    message["content-type"] = response.headers.get("content-type") or "text/html"
    charset = message.get_param("charset") or "utf-8"
    try:
        return codecs.lookup(str(charset)).name
    except LookupError:
        return "utf-8"


class HTMLRewriter:
    """``HTMLRewriter.new()`` (or ``HTMLRewriter()``), then ``on``/``onDocument``, then ``transform(response)``."""

    def __init__(self) -> None:
        self._element_handlers: list[tuple[Selector, Any]] = []
        self._document_handlers: list[Any] = []

    @classmethod
    def new(cls) -> HTMLRewriter:
        return cls()

    def on(self, selector: str, handlers: Any) -> HTMLRewriter:
        self._element_handlers.append((Selector.parse(selector), _check_handlers(handlers, _ELEMENT_HANDLERS, "on")))
        return self

    def onDocument(self, handlers: Any) -> HTMLRewriter:  # noqa: N802 - JS name
        self._document_handlers.append(_check_handlers(handlers, _DOCUMENT_HANDLERS, "onDocument"))
        return self

    def transform(self, response: Response) -> Response:
        if not isinstance(response, Response):
            raise TypeError(f"HTMLRewriter.transform() takes a Response, not {type(response).__name__}")
        headers = response.headers.copy()
        headers.delete("content-length")  # the rewritten body has its own length
        if response.status in NULL_BODY_STATUSES:
            return Response(None, status=response.status, status_text=response.status_text, headers=headers,
                            web_socket=response.web_socket)
        # A copy of the handlers: on() calls after this leave a transform already under way alone.
        run = _Rewrite(list(self._element_handlers), list(self._document_handlers), _charset(response))
        body = run.rewrite(response._iter_bytes())
        return Response(body, status=response.status, status_text=response.status_text, headers=headers)


class _Rewrite:
    """One transform: the open elements, the output of the chunk in progress, and the handlers to run."""

    def __init__(self, element_handlers: list[tuple[Selector, Any]], document_handlers: list[Any], encoding: str) -> None:
        self._element_handlers = element_handlers
        self._document_handlers = document_handlers
        self._encoding = encoding
        self._stack: list[Element] = []
        self._top_level = Element(StartTagToken("#document", (), "", False), 0, 0, XHTML_NAMESPACE)
        self._out: list[str] = []
        self._num_suppressing = 0  # open elements whose content is being dropped
        self._text_open = False  # a text node whose last chunk has not been announced yet
        self._num_content_owners = 0  # open elements with text or comment handlers

    async def rewrite(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        tokenizer = HtmlTokenizer(self._encoding)
        try:
            async for chunk in chunks:
                await self._process(tokenizer.feed(chunk))
                if self._out:
                    yield self._flush()
            await self._process(tokenizer.close())
            await self._finish()
            if self._out:
                yield self._flush()
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()

    def _flush(self) -> bytes:
        data, self._out = encode("".join(self._out), self._encoding), []
        return data

    def _emit(self, text: str) -> None:
        if text and not self._num_suppressing:
            self._out.append(text)

    async def _process(self, tokens: list[Token]) -> None:
        for index, token in enumerate(tokens):
            if isinstance(token, TextToken):
                last = index + 1 < len(tokens)  # text runs are merged: a following token ends the node
                await self._text(token.raw, last)
                self._text_open = not last
                continue
            await self._end_text_node()
            match token:
                case StartTagToken():
                    await self._start_tag(token)
                case EndTagToken():
                    await self._end_tag(token)
                case CommentToken():
                    await self._comment(token)
                case DoctypeToken():
                    await self._doctype(token)
                case RawToken():
                    self._emit(token.raw)

    async def _end_text_node(self) -> None:
        if self._text_open:
            self._text_open = False
            await self._text("", True)

    # --- tokens ---------------------------------------------------------------------------------------

    def _content_handlers(self, name: str) -> list[Callable[[Any], Any]]:
        """The ``name`` handlers that see content here: those of open matched elements, then the document's."""
        if not self._num_content_owners and not self._document_handlers:
            return []
        owners = [owner for element in self._stack for owner in element.content_handlers] + self._document_handlers
        functions: dict[int, Callable[[Any], Any]] = {}
        for owner in owners:  # one call per handler object, however many open elements it matched
            if id(owner) not in functions and (function := _handler(owner, name)) is not None:
                functions[id(owner)] = function
        return list(functions.values())

    async def _text(self, text: str, last: bool) -> None:
        handlers = self._content_handlers("text")
        if not handlers:
            self._emit(text)
            return
        chunk = TextChunk(text, last)
        for function in handlers:
            await _call(function, chunk)
        self._emit(chunk.output())

    async def _comment(self, token: CommentToken) -> None:
        handlers = self._content_handlers("comments")
        if not handlers:
            self._emit(token.raw)
            return
        comment = Comment(token.text, token.raw)
        for function in handlers:
            await _call(function, comment)
        self._emit(comment.output())

    async def _doctype(self, token: DoctypeToken) -> None:
        doctype = Doctype(token.name, token.public_id, token.system_id)
        for owner in self._document_handlers:
            if (function := _handler(owner, "doctype")) is not None:
                await _call(function, doctype)
        self._emit(token.raw)

    async def _start_tag(self, token: StartTagToken) -> None:
        await self._close_implied(token.name)
        parent = self._stack[-1] if self._stack else self._top_level
        child_index, type_index = parent.count_child(token.name)
        element = Element(token, child_index, type_index, self._namespace(token.name, parent))
        chain = [*self._stack, element]
        for selector, handlers in self._element_handlers:
            if not selector.matches(chain):
                continue
            if (function := _handler(handlers, "element")) is not None:
                await _call(function, element)
            if _handler(handlers, "text") or _handler(handlers, "comments"):
                element.content_handlers.append(handlers)
        self._emit(element.start_output())
        if not element.canHaveContent:
            self._emit(element.end_output(None, None))
            return
        self._stack.append(element)
        self._num_content_owners += bool(element.content_handlers)
        if element.suppresses_content:
            self._num_suppressing += 1

    async def _end_tag(self, token: EndTagToken) -> None:
        depth = next((depth for depth in range(len(self._stack) - 1, -1, -1) if self._stack[depth].name == token.name), None)
        if depth is None:
            self._emit(token.raw)  # an end tag with no open element passes through
            return
        while len(self._stack) > depth + 1:
            await self._end_element(None)
        await self._end_element(token)

    async def _end_element(self, token: EndTagToken | None) -> None:
        """Close the innermost open element, at ``token`` or (None) implicitly."""
        element = self._stack.pop()
        self._num_content_owners -= bool(element.content_handlers)
        if element.suppresses_content:
            self._num_suppressing -= 1
        end_tag = None
        if token is not None and element.end_tag_handlers:
            end_tag = EndTag(element.tagName)
            for function in element.end_tag_handlers:
                await _call(function, end_tag)
        self._emit(element.end_output(None if token is None else token.raw, end_tag))

    async def _close_implied(self, name: str) -> None:
        if name in _CLOSES_P:
            await self._close_open("p", frozenset({"p"}), _SCOPE)
        if name in _IMPLIED_ENDS:
            await self._close_open(name, *_IMPLIED_ENDS[name])

    async def _close_open(self, name: str, ends: frozenset[str], stops: frozenset[str]) -> None:
        """End the outermost open element in ``ends`` above the nearest element in ``stops``."""
        target = None
        for depth in range(len(self._stack) - 1, -1, -1):
            if self._stack[depth].name in stops:
                break
            if self._stack[depth].name in ends:
                target = depth
        while target is not None and len(self._stack) > target:
            await self._end_element(None)

    def _namespace(self, name: str, parent: Element) -> str:
        if name == "svg":
            return SVG_NAMESPACE
        if name == "math":
            return MATHML_NAMESPACE
        if parent.namespaceURI == SVG_NAMESPACE and parent.name == "foreignobject":
            return XHTML_NAMESPACE
        return parent.namespaceURI

    async def _finish(self) -> None:
        await self._end_text_node()
        while self._stack:
            await self._end_element(None)
        end = DocumentEnd()
        for owner in self._document_handlers:
            if (function := _handler(owner, "end")) is not None:
                await _call(function, end)
        self._emit(end.output())

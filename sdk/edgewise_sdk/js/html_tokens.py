"""An incremental HTML tokenizer that keeps every token's exact source text, for a byte-for-byte rewriter.

Built on the standard library's ``html.parser.HTMLParser``. Of the maintained tokenizers at hand it is the
one that is truly incremental (``feed()`` one network chunk at a time, holding back only an unfinished
construct) and reports where each token starts (``getpos()``): html5lib and lxml's HTML parsers build trees
or pull from a blocking file, selectolax and html5-parser need the whole document, and the lol-html binding
on PyPI exposes no element handlers. HTMLParser hands out tag names and decoded values, not source text, so
each token's source is cut from the input between its start and the next token's start; together the
tokens cover every consumed character, which is what lets untouched markup pass through unchanged.

Bytes are decoded with ``surrogateescape``: bytes that are not valid in the charset come back out as they went
in. ``encode`` is the matching way back.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Union

_DOCTYPE = re.compile(
    r"""doctype(?:\s+(?P<name>[^\s>]+))?
        (?:\s+public\s*(?P<q1>["'])(?P<public>.*?)(?P=q1))?
        (?:\s*(?:system\s*)?(?P<q2>["'])(?P<system>.*?)(?P=q2))?""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class StartTagToken:
    name: str  # lower case
    attributes: tuple[tuple[str, str | None], ...]  # names lower case, values decoded; None: no value
    raw: str
    self_closing: bool


@dataclass(frozen=True)
class EndTagToken:
    name: str
    raw: str


@dataclass(frozen=True)
class TextToken:
    raw: str  # source text: character references are not decoded, as in lol-html's text chunks


@dataclass(frozen=True)
class CommentToken:
    text: str
    raw: str


@dataclass(frozen=True)
class DoctypeToken:
    name: str | None
    public_id: str | None
    system_id: str | None
    raw: str


@dataclass(frozen=True)
class RawToken:
    """Markup passed through as it is: processing instructions, CDATA sections, ignored junk."""

    raw: str


Token = Union[StartTagToken, EndTagToken, TextToken, CommentToken, DoctypeToken, RawToken]


_SURROGATEESCAPE = codecs.lookup_error("surrogateescape")


def _html_encode_error(error: UnicodeError) -> tuple[str | bytes, int]:
    # Escaped input bytes go back as they came; inserted text the charset can't hold becomes &#NNN;.
    try:
        return _SURROGATEESCAPE(error)
    except UnicodeError:
        return codecs.xmlcharrefreplace_errors(error)


codecs.register_error("edgewise.html", _html_encode_error)


def encode(text: str, encoding: str) -> bytes:
    return text.encode(encoding, "edgewise.html")


class _Parser(HTMLParser):
    """Records (token kind, start position, details) for each callback; cutting source text is the caller's."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.events: list[tuple[str, tuple[int, int], tuple]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", self.getpos(), (tag, tuple(attrs), self.get_starttag_text() or "", False)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", self.getpos(), (tag, tuple(attrs), self.get_starttag_text() or "", True)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", self.getpos(), (tag,)))

    def handle_data(self, data: str) -> None:
        self.events.append(("text", self.getpos(), ()))

    def handle_comment(self, data: str) -> None:
        self.events.append(("comment", self.getpos(), (data,)))

    def handle_decl(self, decl: str) -> None:
        self.events.append(("decl", self.getpos(), (decl,)))

    def handle_pi(self, data: str) -> None:
        self.events.append(("raw", self.getpos(), ()))

    def unknown_decl(self, data: str) -> None:
        self.events.append(("raw", self.getpos(), ()))


class HtmlTokenizer:
    """``feed(chunk) -> tokens`` as far as the input allows; ``close() -> the rest``."""

    def __init__(self, encoding: str = "utf-8") -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="surrogateescape")
        self._parser = _Parser()
        self._pending = ""  # decoded input not yet cut into tokens
        self._cursor = 0  # index in _pending of position _cursor_pos
        self._cursor_pos = (1, 0)

    def feed(self, data: bytes) -> list[Token]:
        text = self._decoder.decode(data)
        if not text:
            return []
        self._pending += text
        self._parser.feed(text)
        return self._cut()

    def close(self) -> list[Token]:
        text = self._decoder.decode(b"", final=True)
        self._pending += text
        self._parser.feed(text)
        self._parser.close()
        return self._cut()

    def _cut(self) -> list[Token]:
        events, self._parser.events = self._parser.events, []
        consumed = len(self._pending) - len(self._parser.rawdata)
        starts = [self._index_of(position) for _, position, _ in events]
        tokens: list[Token] = []
        if starts and starts[0] > 0:
            tokens.append(RawToken(self._pending[:starts[0]]))
        for (kind, _, details), start, end in zip(events, starts, [*starts[1:], consumed]):
            _append(tokens, _token(kind, details, self._pending[start:end]))
        if not events and consumed:
            tokens.append(RawToken(self._pending[:consumed]))
        self._pending = self._pending[consumed:]
        self._cursor, self._cursor_pos = 0, self._parser.getpos()
        return tokens

    def _index_of(self, position: tuple[int, int]) -> int:
        """HTMLParser's (line, column) of a token start as an index into ``_pending``; positions only grow."""
        line, column = position
        cursor_line, cursor_column = self._cursor_pos
        while cursor_line < line:
            self._cursor = self._pending.index("\n", self._cursor) + 1
            cursor_line, cursor_column = cursor_line + 1, 0
        self._cursor += column - cursor_column
        self._cursor_pos = (line, column)
        return self._cursor


def _token(kind: str, details: tuple, raw: str) -> list[Token]:
    """The token for one event, plus a RawToken for any ignored source (``</>``) that followed it."""
    if kind == "start":
        name, attributes, tag_text, self_closing = details
        return _split(StartTagToken(name, attributes, raw[:len(tag_text)], self_closing), raw, len(tag_text))
    if kind == "end":
        length = raw.find(">") + 1 or len(raw)
        return _split(EndTagToken(details[0], raw[:length]), raw, length)
    if kind == "text":
        return [TextToken(raw)]
    if kind == "comment":
        return [CommentToken(details[0], raw)]
    if kind == "decl" and details[0][:7].lower() == "doctype":
        match = _DOCTYPE.match(details[0])
        return [DoctypeToken((match["name"] or "").lower() or None, match["public"], match["system"], raw)]
    return [RawToken(raw)]


def _split(token: Token, raw: str, length: int) -> list[Token]:
    return [token] if length >= len(raw) else [token, RawToken(raw[length:])]


def _append(tokens: list[Token], new: list[Token]) -> None:
    for token in new:
        if isinstance(token, TextToken) and tokens and isinstance(tokens[-1], TextToken):
            tokens[-1] = TextToken(tokens[-1].raw + token.raw)  # one text run, however HTMLParser split it
        else:
            tokens.append(token)

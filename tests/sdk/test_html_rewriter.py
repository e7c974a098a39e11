"""``HTMLRewriter``: streamed, byte-for-byte where untouched, with Cloudflare's handler and selector API."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from js import HTMLRewriter
from js.css_selectors import SelectorError
from pyodide.ffi import create_proxy
from workers import Response

PAGE = (
    b'<!DOCTYPE html>\r\n<HTML lang=en><head><meta charset=utf-8><title>T &amp; t</title>\n'
    b'<script>if (a < b) { s = "</div><p>"; }</script><style>p>b{x:1}</style></head>\n'
    b"<body class='main  page'><!-- note --><p id=first data-x=\"a&quot;b\">Hello, <b>w\xc3\xb6rld</b>!</p>"
    b'<ul><li>one<li class=two>two<li>three</ul><img src=a.png alt="x" ><br/>'
    b'<input disabled><svg><path d="M0"/></svg>\xff\xfe bad bytes &copy; <?pi x?></body></HTML>'
)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)


def _html(body: Any, **headers: str) -> Response:
    return Response(body, headers={"content-type": "text/html; charset=utf-8", **headers})


async def _rewrite(rewriter: HTMLRewriter, html: bytes | str, size: int = 7) -> str:
    data = html.encode() if isinstance(html, str) else html
    return await rewriter.transform(_html(_chunks(data, size))).text()


# --- pass-through and streaming ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 4096])
async def test_untouched_markup_passes_byte_for_byte(size: int) -> None:
    seen: list[str] = []
    rewriter = HTMLRewriter.new().on("*", {"element": lambda el: seen.append(el.tagName)}) \
        .onDocument({"comments": lambda c: None})
    body = await rewriter.transform(_html(_chunks(PAGE, size))).bytes()
    assert body == PAGE
    assert seen[:6] == ["html", "head", "meta", "title", "script", "style"]
    assert "div" not in seen and seen.count("p") == 1  # script content is not markup


async def test_the_first_chunk_comes_out_before_the_input_ends() -> None:
    release = asyncio.Event()
    sent: list[bytes] = []

    async def slow_body() -> AsyncIterator[bytes]:
        for part in (b"<html><body><a hr", b'ef="/one">1</a><a href="/t', b'wo">2</a>'):
            sent.append(part)
            yield part
        await asyncio.wait_for(release.wait(), 5)
        yield b"<a href='/three'>3</a></body></html>"

    rewriter = HTMLRewriter().on("a[href]", {"element": lambda el: el.setAttribute("href", "https://e.com" + el.getAttribute("href"))})
    chunks = aiter(rewriter.transform(_html(slow_body())).body)
    out = b""
    async with asyncio.timeout(5):
        while b"/two" not in out:
            out += await anext(chunks)
    assert not release.is_set() and len(sent) == 3
    assert out == b'<html><body><a href="https://e.com/one">1</a><a href="https://e.com/two">2</a>'
    release.set()
    rest = b"".join([chunk async for chunk in chunks])
    assert out + rest == (b'<html><body><a href="https://e.com/one">1</a><a href="https://e.com/two">2</a>'
                          b'<a href="https://e.com/three">3</a></body></html>')


async def test_headers_status_and_length() -> None:
    original = Response(b"<p>x</p>", status=404, headers={"content-type": "text/html", "content-length": "8", "x-a": "1"})
    rewritten = HTMLRewriter.new().on("p", {"element": lambda el: el.append("yz")}).transform(original)
    assert (rewritten.status, rewritten.headers.get("x-a"), rewritten.headers.get("content-length")) == (404, "1", None)
    assert await rewritten.text() == "<p>xyz</p>"
    assert original.bodyUsed


async def test_a_declared_charset_is_kept() -> None:
    data = "<p title='é'>café</p>".encode("latin-1")
    response = Response(_chunks(data, 3), headers={"content-type": "text/html; charset=ISO-8859-1"})
    rewriter = HTMLRewriter.new().on("p", {"element": lambda el: el.after("€ ü")})
    assert await rewriter.transform(response).bytes() == "<p title='é'>café</p>".encode("latin-1") + b"&#8364; \xfc"


# --- elements ------------------------------------------------------------------------------------------------

async def test_attributes_read_and_written() -> None:
    found: dict[str, Any] = {}

    def element(el: Any) -> None:
        found.update(attrs=el.attributes, quoted=el.getAttribute("data-x"), missing=el.getAttribute("nope"),
                     has=(el.hasAttribute("ID"), el.hasAttribute("nope")), ns=el.namespaceURI)
        el.setAttribute("id", "main").setAttribute("title", 'say "hi" & go').removeAttribute("data-x")

    out = await _rewrite(HTMLRewriter.new().on("p", {"element": element}), '<P id=first data-x="a&quot;b" hidden>x</P>')
    assert found == {"attrs": [["id", "first"], ["data-x", 'a"b'], ["hidden", ""]], "quoted": 'a"b', "missing": None,
                     "has": (True, False), "ns": "http://www.w3.org/1999/xhtml"}
    assert out == '<P id="main" hidden title="say &quot;hi&quot; &amp; go">x</P>'


async def test_renaming_a_tag_renames_its_end_tag() -> None:
    def element(el: Any) -> None:
        el.tagName = "section"

    out = await _rewrite(HTMLRewriter.new().on("div.x", {"element": element}), '<div class=x><div>in</div></div><div>o</div>')
    assert out == '<section class="x"><div>in</div></section><div>o</div>'


async def test_content_is_escaped_unless_marked_html() -> None:
    def element(el: Any) -> None:
        el.before("<b>", {"html": True}).before("1<2")
        el.after("</b>", html=True).after("a&b")
        el.prepend("[").prepend("<i>", {"html": True})
        el.append("]").append("<hr>", {"html": False})

    out = await _rewrite(HTMLRewriter.new().on("span", {"element": element}), "<span>x</span>")
    assert out == "<b>1&lt;2<span><i>[x]&lt;hr&gt;</span>a&amp;b</b>"


@pytest.mark.parametrize(("method", "args", "expected"), [
    ("remove", (), "<div>a<!--c--><b>z</b></div>"),
    ("replace", ("<em>new</em>", {"html": True}), "<div>a<!--c--><em>new</em><b>z</b></div>"),
    ("replace", ("<em>new</em>",), "<div>a<!--c-->&lt;em&gt;new&lt;/em&gt;<b>z</b></div>"),
    ("removeAndKeepContent", (), "<div>a<!--c-->keep <i>me</i><b>z</b></div>"),
    ("setInnerContent", ("<u>in</u>", {"html": True}), "<div>a<!--c--><p class=t><u>in</u></p><b>z</b></div>"),
    ("setInnerContent", ("1<2",), "<div>a<!--c--><p class=t>1&lt;2</p><b>z</b></div>"),
])
async def test_removing_and_replacing(method: str, args: tuple[Any, ...], expected: str) -> None:
    states: list[bool] = []

    def element(el: Any) -> None:
        getattr(el, method)(*args)
        states.append(el.removed)

    page = "<div>a<!--c--><p class=t>keep <i>me</i></p><b>z</b></div>"
    for size in (1, 4, 100):
        assert await _rewrite(HTMLRewriter.new().on("p.t", {"element": element}), page, size) == expected
    assert states[0] is (method != "setInnerContent")


async def test_end_tag_handlers() -> None:
    names: list[str] = []

    async def end(tag: Any) -> None:
        await asyncio.sleep(0)
        names.append(tag.name)
        tag.before("<!--b-->", html=True).after("!")
        if tag.name == "i":
            tag.remove()

    def element(el: Any) -> None:
        el.onEndTag(end)
        if el.tagName == "b":
            el.onEndTag(lambda tag: setattr(tag, "name", "strong"))

    out = await _rewrite(HTMLRewriter.new().on("b, i", {"element": element}), "<b>x</b><i>y</i><br>")
    assert names == ["b", "i"]
    assert out == "<b>x<!--b--></strong>!<i>y<!--b-->!<br>"


async def test_void_elements_have_no_content_and_no_end_tag() -> None:
    errors: list[str] = []

    def element(el: Any) -> None:
        el.append("lost").prepend("lost").after("after")
        try:
            el.onEndTag(lambda tag: None)
        except TypeError as error:
            errors.append(str(error))
        assert not el.canHaveContent

    out = await _rewrite(HTMLRewriter.new().on("img", {"element": element}), "<p><img src=x>t</p>")
    assert out == "<p><img src=x>aftert</p>"
    assert errors and "has no end tag" in errors[0]


# --- text, comments, document ----------------------------------------------------------------------------------

async def test_text_chunks_inside_matched_elements() -> None:
    chunks: list[tuple[str, bool]] = []

    def text(chunk: Any) -> None:
        chunks.append((chunk.text, chunk.lastInTextNode))
        if chunk.text == "secret":
            chunk.replace("[hidden]")
        elif chunk.text.startswith("drop"):
            chunk.remove()

    rewriter = HTMLRewriter.new().on("p", {"text": text})
    out = await _rewrite(rewriter, "out<p>a &amp; b<i>secret</i>drop<b>x</b></p>after", size=4096)
    assert out == "out<p>a &amp; b<i>[hidden]</i><b>x</b></p>after"
    assert chunks == [("a &amp; b", True), ("secret", True), ("drop", True), ("x", True)]

    chunks.clear()
    await _rewrite(HTMLRewriter.new().on("p", {"text": text}), "<p>abcdef</p>", size=2)
    assert "".join(text for text, _ in chunks) == "abcdef"
    assert chunks[-1] == ("", True) and not any(last for _, last in chunks[:-1])


async def test_comments_rewritten_and_removed() -> None:
    def comments(comment: Any) -> None:
        if comment.text == " drop ":
            comment.remove()
        else:
            comment.text = comment.text.upper()
            comment.before("(").after(")")

    out = await _rewrite(HTMLRewriter.new().on("div", {"comments": comments}), "<!-- top --><div><!-- drop --><!--x--></div>")
    assert out == "<!-- top --><div>(<!--X-->)</div>"


async def test_document_handlers() -> None:
    seen: dict[str, Any] = {"text": "", "comments": []}

    class Document:
        def doctype(self, doctype: Any) -> None:
            seen["doctype"] = (doctype.name, doctype.publicId, doctype.systemId)

        def comments(self, comment: Any) -> None:
            seen["comments"].append(comment.text)

        def text(self, chunk: Any) -> None:
            seen["text"] += chunk.text

        async def end(self, end: Any) -> None:
            await asyncio.sleep(0)
            end.append("<!-- served by edgewise -->", html=True)

    page = ('<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">'
            "<p>a<!--c-->b</p>")
    out = await _rewrite(HTMLRewriter.new().onDocument(Document()), page)
    assert out == page + "<!-- served by edgewise -->"
    assert seen == {"doctype": ("html", "-//W3C//DTD HTML 4.01//EN", "http://www.w3.org/TR/html4/strict.dtd"),
                    "comments": ["c"], "text": "ab"}


async def test_handlers_as_objects_dicts_and_proxies() -> None:
    calls: list[str] = []

    class Handler:
        async def element(self, el: Any) -> None:
            await asyncio.sleep(0)
            calls.append(f"object:{el.tagName}")

    rewriter = (HTMLRewriter.new().on("a", Handler()).on("a", {"element": lambda el: calls.append("dict")})
                .on("a", create_proxy(Handler())).on("a", create_proxy({"element": lambda el: calls.append("proxy-dict")})))
    await _rewrite(rewriter, "<a>x</a>")
    assert calls == ["object:a", "dict", "object:a", "proxy-dict"]


# --- selectors -------------------------------------------------------------------------------------------------

SELECTOR_PAGE = """
<main id=m class="wide page">
  <h1 id=h lang=en-GB>t</h1>
  <p id=p1 class="note first">a</p>
  <div id=d1><p id=p2 data-kind="x-ray">b</p><span id=s1>c</span><p id=p3 class=note>d</p></div>
  <p id=p4 title="hello world" data-kind=xylophone>e</p>
  <a id=a1 href="https://e.com/file.pdf">f</a><a id=a2 href="/local">g</a>
  <ul id=u><li id=l1>1<li id=l2>2<li id=l3>3<li id=l4>4</ul>
  <p id=p5>unclosed<div id=d2>after p</div>
</main>
"""


@pytest.mark.parametrize(("selector", "ids"), [
    ("*", None),
    ("p", ["p1", "p2", "p3", "p4", "p5"]),
    ("P", ["p1", "p2", "p3", "p4", "p5"]),
    ("p.note", ["p1", "p3"]),
    (".note.first", ["p1"]),
    ("#d1", ["d1"]),
    ("p#p3.note", ["p3"]),
    ("[title]", ["p4"]),
    ('[title="hello world"]', ["p4"]),
    ("[title=hello]", []),
    ("[title~=world]", ["p4"]),
    ('[href^="https:"]', ["a1"]),
    ('[href$=".pdf"]', ["a1"]),
    ("[data-kind*=ra]", ["p2"]),
    ("[lang|=en]", ["h"]),
    ('[data-kind="X-RAY" i]', ["p2"]),
    ('[data-kind="X-RAY" s]', []),
    ("main p", ["p1", "p2", "p3", "p4", "p5"]),
    ("main > p", ["p1", "p4", "p5"]),
    ("main>div>p", ["p2", "p3"]),
    ("main div p", ["p2", "p3"]),
    ("div > p:first-child", ["p2"]),
    ("li:nth-child(2)", ["l2"]),
    ("li:nth-child(odd)", ["l1", "l3"]),
    ("li:nth-child(2n)", ["l2", "l4"]),
    ("li:nth-child(-n+2)", ["l1", "l2"]),
    ("li:nth-child(n+3)", ["l3", "l4"]),
    ("main > p:nth-of-type(2)", ["p4"]),
    ("div p:first-of-type", ["p2"]),
    ("main > :first-child", ["h"]),
    ("p:not(.note)", ["p2", "p4", "p5"]),
    ("main > *:not(p, a, ul)", ["h", "d1", "d2"]),
    ("p div", []),  # <div> ends the open <p>, as in a browser
    ("h1, #s1", ["h", "s1"]),
])
async def test_selectors(selector: str, ids: list[str] | None) -> None:
    matched: list[str] = []
    rewriter = HTMLRewriter.new().on(selector, {"element": lambda el: matched.append(el.getAttribute("id"))})
    await _rewrite(rewriter, SELECTOR_PAGE, size=11)
    if ids is None:
        assert matched[:3] == ["m", "h", "p1"] and len(matched) == 17
    else:
        assert matched == ids


@pytest.mark.parametrize(("selector", "message"), [
    ("a + b", "sibling combinator '+'"),
    ("a ~ b", "sibling combinator '~'"),
    ("li:last-child", ":last-child is not supported"),
    ("a:hover", ":hover is not supported"),
    ("div >", "expected an element name"),
    ("", "expected an element name"),
    ("a[href", "expected ']'"),
    ("li:nth-child(x)", "needs an argument such as 3, odd"),
    ("a:not(b:not(c))", ":not() inside :not()"),
    ("a!", "unexpected '!'"),
])
def test_unsupported_selectors_are_refused_at_on(selector: str, message: str) -> None:
    with pytest.raises(SelectorError, match=re.escape(message)) as raised:
        HTMLRewriter.new().on(selector, {"element": print})
    assert repr(selector) in str(raised.value)
    assert isinstance(raised.value, TypeError)


# --- bad input -------------------------------------------------------------------------------------------------

def test_bad_arguments_say_what_to_fix() -> None:
    with pytest.raises(TypeError, match="at least one of element, comments, text"):
        HTMLRewriter.new().on("a", {"elements": print})
    with pytest.raises(TypeError, match="at least one of doctype, comments, text, end"):
        HTMLRewriter.new().onDocument(object())
    with pytest.raises(TypeError, match="takes a Response, not str"):
        HTMLRewriter.new().transform("<p>")


async def test_a_failing_handler_fails_the_body() -> None:
    def element(el: Any) -> None:
        el.append(42)

    rewritten = HTMLRewriter.new().on("p", {"element": element}).transform(_html(b"<p>x</p>"))
    with pytest.raises(TypeError, match="content must be a str, not int"):
        await rewritten.text()


async def test_handlers_added_later_leave_a_running_transform_alone() -> None:
    rewriter = HTMLRewriter.new().on("p", {"element": lambda el: el.setAttribute("a", "1")})
    rewritten = rewriter.transform(_html(_chunks(b"<p>x</p><b>y</b>", 3)))
    rewriter.on("b", {"element": lambda el: el.remove()})
    assert await rewritten.text() == '<p a="1">x</p><b>y</b>'
    assert await rewriter.transform(_html(b"<p>x</p><b>y</b>")).text() == '<p a="1">x</p>'


async def test_implied_end_tags_place_appended_content() -> None:
    ends: list[str] = []

    def element(el: Any) -> None:
        el.append("!").after("|")
        el.onEndTag(lambda tag: ends.append(tag.name))

    out = await _rewrite(HTMLRewriter.new().on("li, p", {"element": element}), "<ul><li>a<li>b</ul><p>c<div>d</div><p>e</p>")
    assert out == "<ul><li>a!|<li>b!|</ul><p>c!|<div>d</div><p>e!</p>|"
    assert ends == ["p"]  # only the end tag present in the source

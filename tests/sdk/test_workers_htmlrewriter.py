"""``workers.htmlrewriter``: the runtime SDK's Python HTMLRewriter (``on``, ``on_document``, ``transform``)."""

from __future__ import annotations

import asyncio

import pytest

from js.css_selectors import SelectorError
from workers import Response
from workers.htmlrewriter import HTMLRewriter

PAGE = '<!DOCTYPE html><html><head><title>t</title></head><body><a href="/x">x</a><!-- c --></body></html>'


class Links:
    def element(self, element):
        element.setAttribute("href", "https://example.com" + element.getAttribute("href"))


class Document:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def doctype(self, doctype):
        self.seen.append(f"doctype:{doctype.name}")

    def comments(self, comment):
        comment.remove()

    def end(self, end):
        end.append("<!-- done -->", html=True)


def _rewrite(rewriter: HTMLRewriter) -> str:
    async def run() -> str:
        return await rewriter.transform(Response(PAGE, headers={"content-type": "text/html"})).text()
    return asyncio.run(run())


def test_on_and_on_document_take_plain_handler_objects_and_the_rewriter_runs_again() -> None:
    document = Document()
    rewriter = HTMLRewriter().on("a", Links()).on_document(document)
    expected = ('<!DOCTYPE html><html><head><title>t</title></head><body><a href="https://example.com/x">x</a>'
                '</body></html><!-- done -->')
    assert _rewrite(rewriter) == expected
    assert _rewrite(rewriter) == expected  # a transform leaves the rewriter as it was
    assert document.seen == ["doctype:html", "doctype:html"]


def test_a_bad_selector_names_the_part() -> None:
    with pytest.raises(SelectorError, match=":has"):
        HTMLRewriter().on("div:has(p)", Links())

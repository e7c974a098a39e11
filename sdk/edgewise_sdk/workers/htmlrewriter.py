"""``workers.htmlrewriter``: the Python SDK's ``HTMLRewriter``, as Cloudflare's runtime SDK ships it.

``from workers.htmlrewriter import HTMLRewriter``, then ``HTMLRewriter().on(selector, handler)``,
``.on_document(handler)`` and ``.transform(response)``, with no ``create_proxy`` needed. It is the same
rewriter as ``js.HTMLRewriter`` (edgewise_sdk/js/html_rewriter.py), under the SDK's Python names.
"""

from __future__ import annotations

from typing import Any

from edgewise_sdk.js.html_rewriter import HTMLRewriter as _JsHTMLRewriter

__all__ = ["HTMLRewriter"]


class HTMLRewriter(_JsHTMLRewriter):
    """``on(selector, handler)`` for element/comments/text handlers, ``on_document(handler)`` for
    doctype/comments/text/end; each returns the rewriter. ``transform`` may run any number of times."""

    def on_document(self, handlers: Any) -> HTMLRewriter:
        return self.onDocument(handlers)

"""A Worker that rewrites its own streamed HTML with ``HTMLRewriter``, served through the edge's front door."""

from __future__ import annotations

import asyncio

import httpx

WORKER = """
    import asyncio
    from js import HTMLRewriter
    from workers import Response, WorkerEntrypoint

    RELEASE = asyncio.Event()
    SENT = []

    async def origin_page():
        # Small chunks, with tags cut across them, as an origin's body arrives.
        for part in (b"<html><head><title>Sh", b"op</title></head><body><a hr", b"ef='/cart'>cart</a><!-- x -->"):
            SENT.append(part)
            yield part
        await asyncio.wait_for(RELEASE.wait(), 5)
        yield b"<p class=price data-cents=1999>?</p><p class=price data-cents=5>?</p></body></html>"

    class Prices:
        async def element(self, element):
            await asyncio.sleep(0)
            element.setInnerContent(f"${int(element.getAttribute('data-cents')) / 100:.2f}")

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            colo = request._js_request.cf.colo
            rewriter = (
                HTMLRewriter.new()
                .on("a[href^='/']", {"element": lambda el: el.setAttribute("href", "https://shop.test" + el.getAttribute("href"))})
                .on("p.price", Prices())
                .onDocument({"comments": lambda comment: comment.remove(),
                             "end": lambda end: end.append(f"<!-- rewritten at {colo} -->", {"html": True})})
            )
            return rewriter.transform(Response(origin_page(), headers={"content-type": "text/html; charset=utf-8"}))
"""

FIRST_PART = '<html><head><title>Shop</title></head><body><a href="https://shop.test/cart">cart</a>'
REST = '<p class=price data-cents=1999>$19.99</p><p class=price data-cents=5>$0.05</p></body></html><!-- rewritten at DFW -->'


async def test_a_worker_streams_rewritten_html_through_the_edge(make_edge, serve) -> None:
    edge = make_edge(WORKER, pops=("DFW",))
    module = edge.pop("DFW").worker.module
    base = await serve(edge.front_door)
    async with httpx.AsyncClient(base_url=base) as client, asyncio.timeout(10):
        async with client.stream("GET", "/") as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            chunks = response.aiter_text()
            received = ""
            while "cart</a>" not in received:
                received += await anext(chunks)
            # The rewritten start reached the client while the origin body is still waiting.
            assert not module.RELEASE.is_set() and len(module.SENT) == 3
            assert received == FIRST_PART
            module.RELEASE.set()
            received += "".join([chunk async for chunk in chunks])
    assert received == FIRST_PART + REST

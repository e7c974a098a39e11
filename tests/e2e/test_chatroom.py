"""examples/chatroom in a real browser: two headless Chromium pages join one room, a Durable Object that
holds their WebSockets through the hibernation API, and see each other's messages; the room's history
outlives a restart of `edgewise dev`.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dev_process import DevServer
    from playwright.sync_api import Browser, BrowserContext, Page

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chatroom"
WAIT_MS = 15_000


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example, so its state folder is the test's own."""
    copy = tmp_path / "chatroom"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(".wrangler"))
    return copy


def join(context: BrowserContext, url: str, name: str) -> Page:
    page = context.new_page()
    page.goto(f"{url}/?room=tea")
    page.fill("#name", name)
    page.click("#join button")
    page.wait_for_selector("#say:not([hidden])")
    return page


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#say button")


def wait_for_line(page: Page, text: str) -> None:
    page.wait_for_function("(text) => [...document.querySelectorAll('#log div')].some(d => d.textContent === text)",
                           arg=text, timeout=WAIT_MS)


def test_two_pages_chat_through_one_room(browser: Browser, start_dev: Callable[..., DevServer], project: Path) -> None:
    server = start_dev(project, "--no-reload")
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    try:
        ada = join(context, server.url, "ada")
        bob = join(context, server.url, "bob")
        wait_for_line(ada, "bob joined")
        say(ada, "hello bob")
        wait_for_line(bob, "ada: hello bob")
        say(bob, "hi ada")
        wait_for_line(ada, "bob: hi ada")
        wait_for_line(bob, "bob: hi ada")  # the sender gets the broadcast too
        bob.close()
        wait_for_line(ada, "bob left")
    finally:
        context.close()
    assert [row["text"] for row in server.get("/api/room/tea/history").json()] == ["hello bob", "hi ada"]
    server.stop(signal.SIGINT)

    again = start_dev(project, "--no-reload")  # the room's messages were kept in its SQLite database
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    try:
        carol = context.new_page()
        carol.goto(f"{again.url}/?room=tea")
        wait_for_line(carol, "ada: hello bob")
        wait_for_line(carol, "bob: hi ada")
    finally:
        context.close()

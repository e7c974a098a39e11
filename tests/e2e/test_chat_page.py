"""examples/ai-chat in a real browser: headless Chromium opens the page `edgewise dev` serves, asks, and
watches the answer stream in, token by token, until it equals the model's greedy answer.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import AiDevServer, Messages
    from playwright.sync_api import Browser, Page

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ai-chat"
MAX_TOKENS = 40  # enough pieces for a conversation of two turns, few enough to stay fast
# The streamed answer is longer: on a busy machine the tiny model's tokens can arrive in a few bursts,
# and the bubble must still be seen growing in steps.
STREAM_TOKENS = 160
WAIT_MS = 30_000
# Every text length the assistant bubble takes, recorded in the page as the DOM changes.
WATCH_THE_ANSWER = """() => {
  window.answerLengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll("#messages .assistant");
    if (answers.length) window.answerLengths.push(answers[answers.length - 1].textContent.length);
  }).observe(document.getElementById("messages"), {childList: true, subtree: true, characterData: true});
}"""


def example_constant(name: str) -> str:
    """A string constant of the example's Worker, read without running it (it imports `workers`)."""
    for node in ast.parse((EXAMPLE / "src" / "entry.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == name for target in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} is not set in examples/ai-chat/src/entry.py")


@pytest.fixture(scope="module")
def chat(browser: Browser, start_ai_dev: Callable[..., AiDevServer]) -> AiDevServer:
    return start_ai_dev(EXAMPLE, "--latency", "off")


@pytest.fixture
def page(browser: Browser, chat: AiDevServer) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.goto(f"{chat.url}/?max_tokens={MAX_TOKENS}&temperature=0")
    opened.evaluate(WATCH_THE_ANSWER)
    yield opened
    context.close()


def ask(page: Page, question: str) -> str:
    """Type, send, wait until the answer has streamed in; the last assistant bubble's text."""
    page.fill("#prompt", question)
    page.click("#send")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=WAIT_MS)
    assert page.evaluate("document.body.dataset.state") == "done", page.inner_text("#messages")
    return page.locator("#messages .assistant").last.text_content() or ""


def conversation(*turns: str) -> Messages:
    """The example's system prompt, then the turns alternating user and assistant."""
    roles = ("user", "assistant")
    return [{"role": "system", "content": example_constant("SYSTEM_PROMPT")},
            *({"role": roles[i % 2], "content": text} for i, text in enumerate(turns))]


def test_the_answer_streams_into_the_page_and_is_the_greedy_answer(
        page: Page, chat: AiDevServer, greedy: Callable[[Messages, int], str]) -> None:
    question = "Who is the king?"
    page.goto(f"{chat.url}/?max_tokens={STREAM_TOKENS}&temperature=0")
    page.evaluate(WATCH_THE_ANSWER)
    answer = ask(page, question)
    assert answer and answer == greedy(conversation(question), STREAM_TOKENS)
    # The bubble grew in steps while the stream came in, not all at once at the end.
    lengths = page.evaluate("window.answerLengths")
    partial = sorted({length for length in lengths if 0 < length < len(answer)})
    assert len(partial) >= 2, lengths
    assert lengths == sorted(lengths) and lengths[-1] == len(answer)
    # The same conversation asked without streaming answers the same text.
    reply = httpx.post(f"{chat.url}/api/chat", timeout=WAIT_MS / 1000,
                       json={"messages": conversation(question)[1:], "stream": False, "temperature": 0,
                             "max_tokens": STREAM_TOKENS})
    assert reply.json()["response"] == answer


def test_a_follow_up_sends_the_whole_conversation(page: Page, greedy: Callable[[Messages, int], str]) -> None:
    first = ask(page, "Speak, friend.")
    second = ask(page, "And then?")
    assert second == greedy(conversation("Speak, friend.", first, "And then?"), MAX_TOKENS)
    assert page.locator("#messages .assistant").count() == 2
    assert page.locator("#messages .user").all_text_contents() == ["Speak, friend.", "And then?"]

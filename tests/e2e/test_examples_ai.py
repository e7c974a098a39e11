"""The AI examples end to end: ``edgewise dev examples/<name>`` (which starts the AI backend with the
built-in models) answered over HTTP, WebSocket and a headless browser, checked against the engine's greedy output.

``start_ai_dev`` and ``greedy`` come from conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import websockets

if TYPE_CHECKING:
    from conftest import AiDevServer, Messages

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GREEDY = {"max_tokens": 8, "temperature": 0}
CONVERSATION = [{"role": "system", "content": "You are a player."}, {"role": "user", "content": "ROMEO:"}]
CHAT_SYSTEM_PROMPT = {"role": "system", "content": "You are a friendly assistant. Answer briefly."}
RAG_INDEX = "rag-passages"  # examples/rag/wrangler.toml's index_name
RAG_EMBEDDING_MODEL = "@cf/baai/bge-small-en-v1.5"
Greedy = Callable[["Messages", int], str]


@pytest.fixture(scope="module")
def serve_example(start_ai_dev: Callable[..., AiDevServer]) -> Callable[..., AiDevServer]:
    """``serve_example(name, *dev_args)``: one example served at a time; asking for another (or for one
    that was stopped) stops the one before and starts it afresh."""
    current: dict[tuple[str, ...], AiDevServer] = {}

    def serve(name: str, *extra: str) -> AiDevServer:
        key = (name, *extra)
        if key not in current or current[key].popen.poll() is not None:
            for server in current.values():
                server.stop()  # and its backend: the next one loads the models afresh
            current.clear()
            current[key] = start_ai_dev(EXAMPLES / name, *extra)
        return current[key]

    return serve


@pytest.fixture
def chat(serve_example: Callable[[str], AiDevServer]) -> AiDevServer:
    return serve_example("ai-chat")


@pytest.fixture
def chat_websocket(serve_example: Callable[[str], AiDevServer]) -> AiDevServer:
    return serve_example("ai-chat-websocket")


def edgewise(*args: str) -> str:
    """One `edgewise` CLI command, run as a user would; its standard output, or a failure showing both."""
    done = subprocess.run([sys.executable, "-m", "wrangler_like_cli.main", *args], cwd=EXAMPLES.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"edgewise {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def rag_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rag example's data folder (never one in examples/), set up as its README says: the D1 table
    from its migrations, an empty 384-dimension cosine Vectorize index."""
    state = tmp_path_factory.mktemp("rag-state")
    apply_rag_migrations(state)
    create_rag_index(state)
    return state


def rag_cli(state: Path) -> tuple[str, ...]:
    return ("-c", str(EXAMPLES / "rag" / "wrangler.toml"), "--persist-to", str(state), "--local")


def apply_rag_migrations(state: Path) -> None:
    assert "0001_create_passages.sql" in edgewise("d1", "migrations", "apply", "DB", *rag_cli(state))


def create_rag_index(state: Path) -> None:
    edgewise("vectorize", "create", RAG_INDEX, "--dimensions", "384", "--metric", "cosine", *rag_cli(state))


def rag_rows(state: Path) -> list[dict[str, object]]:
    output = edgewise("d1", "execute", "DB", "--json", "--command", "SELECT id, text FROM passages", *rag_cli(state))
    return json.loads(output)[0]["results"]


@pytest.fixture
def rag(serve_example: Callable[..., AiDevServer], rag_state: Path) -> AiDevServer:
    return serve_example("rag", "--persist-to", str(rag_state))


def sse_payloads(body: str) -> list[object]:
    """Each event's data: parsed JSON, or the string "[DONE]"."""
    events = [event for event in body.replace("\r\n", "\n").split("\n\n") if event.strip()]
    data = [event.removeprefix("data:").strip() for event in events]
    return [item if item == "[DONE]" else json.loads(item) for item in data]


# ---- ai-chat --------------------------------------------------------------------------------


def test_chat_page_is_self_contained_html(chat: AiDevServer) -> None:
    page = httpx.get(chat.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for element in ('id="prompt"', 'id="send"', 'id="messages"', "dataset.state", "getReader()", "[DONE]"):
        assert element in page.text
    assert "src=\"http" not in page.text and "href=\"http" not in page.text and "@import" not in page.text


def test_chat_streams_sse_that_equals_one_greedy_reply(chat: AiDevServer, greedy: Greedy) -> None:
    body = {"messages": CONVERSATION, **GREEDY}
    streamed = httpx.post(chat.url + "/api/chat", json=body, timeout=30)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(streamed.text)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2]["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    text = "".join(payload["response"] for payload in payloads[:-1])

    whole = httpx.post(chat.url + "/api/chat", json={**body, "stream": False}, timeout=30)
    assert whole.status_code == 200
    assert whole.json()["response"] == text == greedy(CONVERSATION, GREEDY["max_tokens"])
    assert whole.json()["usage"]["completion_tokens"] == GREEDY["max_tokens"]


def test_chat_adds_its_system_prompt(chat: AiDevServer, greedy: Greedy) -> None:
    from_user = [{"role": "user", "content": "JULIET:"}]
    reply = httpx.post(chat.url + "/api/chat", json={"messages": from_user, "stream": False, **GREEDY}, timeout=30)
    assert reply.json()["response"] == greedy([CHAT_SYSTEM_PROMPT, *from_user], GREEDY["max_tokens"])


def test_chat_refusals(chat: AiDevServer) -> None:
    no_messages = httpx.post(chat.url + "/api/chat", json={"messages": []}, timeout=10)
    assert no_messages.status_code == 400 and "messages" in no_messages.json()["error"]
    too_hot = httpx.post(chat.url + "/api/chat", json={"messages": CONVERSATION, "temperature": 9}, timeout=10)
    assert too_hot.status_code == 502 and too_hot.json()["error"].startswith("5006: ")
    assert httpx.get(chat.url + "/api/chat", timeout=10).status_code == 405


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_chat_page_in_a_headless_browser(chat: AiDevServer, greedy: Greedy) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if _chromium() is None:
        pytest.skip("no chromium to drive")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{chat.url}/?max_tokens=8&temperature=0")
            for turn, prompt in enumerate(("ROMEO:", "JULIET:"), 1):
                page.fill("#prompt", prompt)
                page.click("#send")
                page.wait_for_function(f"document.querySelectorAll('.assistant').length === {turn} && "
                                       "document.body.dataset.state !== 'streaming'", timeout=20_000)
                assert page.evaluate("document.body.dataset.state") == "done"
            answers = [element.inner_text() for element in page.query_selector_all(".assistant")]
            first = greedy([CHAT_SYSTEM_PROMPT, {"role": "user", "content": "ROMEO:"}], 8)
            conversation = [CHAT_SYSTEM_PROMPT, {"role": "user", "content": "ROMEO:"}, {"role": "assistant", "content": first},
                            {"role": "user", "content": "JULIET:"}]
            assert [answer.strip() for answer in answers] == [first.strip(), greedy(conversation, 8).strip()]

            page.goto(f"{chat.url}/?temperature=9")
            page.fill("#prompt", "ROMEO:")
            page.click("#send")
            page.wait_for_function("document.body.dataset.state === 'error'", timeout=20_000)
            assert "5006" in page.inner_text(".error")
        finally:
            browser.close()


# ---- ai-chat-websocket -----------------------------------------------------------------------


async def _reply(connection: websockets.ClientConnection) -> tuple[list[str], dict[str, object]]:
    """The text frames of one reply, and its last frame ({"done", "usage"} or {"error"})."""
    pieces = []
    while True:
        frame = json.loads(await asyncio.wait_for(connection.recv(), 30))
        if "response" not in frame:
            return pieces, frame
        pieces.append(frame["response"])


async def test_websocket_streams_token_frames_then_done(chat_websocket: AiDevServer, greedy: Greedy) -> None:
    url = chat_websocket.ws_url + "/ws"
    async with websockets.connect(url, open_timeout=10) as connection:
        await connection.send(json.dumps({"messages": CONVERSATION, **GREEDY}))
        pieces, last = await _reply(connection)
        assert last == {"done": True, "usage": {"prompt_tokens": last["usage"]["prompt_tokens"],
                                                "completion_tokens": 8,
                                                "total_tokens": last["usage"]["prompt_tokens"] + 8}}
        assert 1 < len(pieces) <= 8 and all(pieces)
        assert "".join(pieces) == greedy(CONVERSATION, 8)

        # queued frames are answered in order; an error frame leaves the connection open
        await connection.send(json.dumps({"prompt": "ROMEO:", "max_tokens": 3, "temperature": 0}))
        await connection.send("not a request? then a prompt")
        await connection.send(json.dumps({"nope": 1}))
        await connection.send(json.dumps({"prompt": "ROMEO:", "temperature": 99}))
        _, first = await _reply(connection)
        assert first["usage"]["completion_tokens"] == 3
        _, plain = await _reply(connection)
        assert plain["done"] is True
        _, bad_frame = await _reply(connection)
        assert bad_frame["error"].startswith('send {"prompt"')
        _, refused = await _reply(connection)
        assert refused["error"].startswith("5006: ")


def test_websocket_example_page_and_plain_get(chat_websocket: AiDevServer) -> None:
    assert httpx.get(chat_websocket.url + "/ws", timeout=10).status_code == 426
    page = httpx.get(chat_websocket.url + "/", timeout=10)
    assert page.status_code == 200 and "new WebSocket(" in page.text


# ---- rag --------------------------------------------------------------------------------------


def bundled_passages() -> list[str]:
    text = (EXAMPLES / "rag" / "src" / "passages.txt").read_text()
    return [passage.strip() for passage in text.split("\n\n") if passage.strip()]


def test_rag_answers_from_the_three_nearest_passages(rag: AiDevServer, rag_state: Path) -> None:
    reply = httpx.get(rag.url + "/", params={"q": "Who loves Clarence?", **GREEDY}, timeout=30)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert isinstance(answer["answer"], str) and answer["answer"].strip()
    assert len(answer["sources"]) == 3
    assert all(source["text"] in bundled_passages() for source in answer["sources"])
    assert answer["sources"][0]["text"].startswith("CLARENCE:\nO, no, he loves me")
    scores = [source["score"] for source in answer["sources"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] < scores[0] <= 1

    again = httpx.get(rag.url + "/", params={"q": "Who loves Clarence?", **GREEDY}, timeout=30)
    assert again.json() == answer  # greedy, and the same index

    # the first question stored each bundled passage once: a row in D1, its vector under the row's id
    rows = rag_rows(rag_state)
    assert sorted(row["text"] for row in rows) == sorted(bundled_passages())
    assert json.loads(edgewise("vectorize", "info", RAG_INDEX, *rag_cli(rag_state)))["vectorCount"] == len(rows)
    ids = ",".join(str(row["id"]) for row in rows)
    stored = json.loads(edgewise("vectorize", "get-by-ids", RAG_INDEX, "--ids", ids, *rag_cli(rag_state)))
    assert sorted(vector["id"] for vector in stored) == sorted(str(row["id"]) for row in rows)
    assert all(len(vector["values"]) == 384 for vector in stored)


def test_rag_ingest_adds_passages_that_questions_find(rag: AiDevServer) -> None:
    line = "ROMEO:\nBut soft, what light through yonder window breaks?"
    added = httpx.post(rag.url + "/ingest", json={"passages": [line]}, timeout=30)
    assert added.status_code == 200 and added.json()["added"] == 1
    assert added.json()["passages"] == len(bundled_passages()) + 1
    twice = httpx.post(rag.url + "/ingest", json={"passages": [line, line, bundled_passages()[0]]}, timeout=30)
    assert twice.json() == {"added": 0, "passages": added.json()["passages"]}  # a stored text is not stored again
    reply = httpx.get(rag.url + "/", params={"q": "What light breaks through the window?", "max_tokens": 4},
                      timeout=30)
    assert reply.json()["sources"][0]["text"] == line

    reset = httpx.post(rag.url + "/ingest", timeout=30)  # no body: the bundled passages only
    assert reset.json() == {"added": 0, "removed": 1, "passages": added.json()["passages"] - 1}
    assert httpx.post(rag.url + "/ingest", timeout=30).json() == {**reset.json(), "removed": 0}
    after = httpx.get(rag.url + "/", params={"q": "What light breaks through the window?", "max_tokens": 4},
                      timeout=30)
    assert line not in [source["text"] for source in after.json()["sources"]]


def test_rag_data_outlives_a_restart_of_dev(rag: AiDevServer, rag_state: Path,
                                             serve_example: Callable[..., AiDevServer]) -> None:
    line = "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?"
    assert httpx.post(rag.url + "/ingest", json={"passages": [line]}, timeout=30).json()["added"] == 1
    question = {"q": "Wherefore art thou Romeo?", **GREEDY}
    before = httpx.get(rag.url + "/", params=question, timeout=30).json()
    assert before["sources"][0]["text"] == line

    rag.stop()
    restarted = serve_example("rag", "--persist-to", str(rag_state))
    assert restarted is not rag
    after = httpx.get(restarted.url + "/", params=question, timeout=30)
    assert after.status_code == 200, after.text
    assert after.json() == before  # the same rows and vectors, the same greedy answer
    # nothing was embedded again: the first question's embedding tokens are those of the question alone
    question_tokens = restarted.metric("edgewise_prompt_tokens_total", RAG_EMBEDDING_MODEL)
    httpx.get(restarted.url + "/", params=question, timeout=30)
    assert restarted.metric("edgewise_prompt_tokens_total", RAG_EMBEDDING_MODEL) == 2 * question_tokens > 0
    assert httpx.post(restarted.url + "/ingest", timeout=30).json() == {
        "added": 0, "removed": 1, "passages": len(bundled_passages())}


def test_rag_refusals(rag: AiDevServer) -> None:
    assert httpx.get(rag.url + "/", timeout=10).status_code == 400
    assert httpx.get(rag.url + "/", params={"q": "x", "max_tokens": "many"}, timeout=10).status_code == 400
    assert httpx.post(rag.url + "/ingest", json={"passages": 3}, timeout=10).status_code == 400
    assert httpx.post(rag.url + "/ingest", json={"passages": ["a", " "]}, timeout=10).status_code == 400


def test_rag_without_its_setup_says_what_to_run(serve_example: Callable[..., AiDevServer],
                                                tmp_path: Path) -> None:
    bare = serve_example("rag", "--persist-to", str(tmp_path))  # no migrations applied, no index created
    no_table = httpx.get(bare.url + "/", params={"q": "Who loves Clarence?"}, timeout=30)
    assert no_table.status_code == 502
    assert "no such table: passages" in no_table.json()["error"]
    assert "d1 migrations apply DB --local" in no_table.json()["error"]

    apply_rag_migrations(tmp_path)
    no_index = httpx.get(bare.url + "/", params={"q": "Who loves Clarence?"}, timeout=30)
    assert no_index.status_code == 502
    assert f"edgewise vectorize create {RAG_INDEX} --dimensions N" in no_index.json()["error"]
    assert rag_rows(tmp_path) == []  # the rows whose vectors could not be stored were taken back

    create_rag_index(tmp_path)
    answered = httpx.get(bare.url + "/", params={"q": "Who loves Clarence?", **GREEDY}, timeout=30)
    assert answered.status_code == 200 and len(answered.json()["sources"]) == 3
    bare.stop()


def test_websocket_example_parses_events_split_anywhere() -> None:
    """src/sse.py on its own: the same events whether the bytes come whole or one at a time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("example_sse", EXAMPLES / "ai-chat-websocket" / "src" / "sse.py")
    assert spec is not None and spec.loader is not None
    sse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sse)
    body = ('data: {"response":"Ça"}\r\n\r\n: a comment\n\ndata: {"response":" va"}\n\n'
            'data: {"response":"","usage":{"completion_tokens":2}}\n\ndata: [DONE]\n\n').encode()
    expected = [{"response": "Ça"}, {"response": " va"}, {"response": "", "usage": {"completion_tokens": 2}}, sse.DONE]
    assert sse.EventParser().feed(body) == expected
    one_at_a_time = sse.EventParser()
    assert [data for index in range(len(body)) for data in one_at_a_time.feed(body[index:index + 1])] == expected
    assert sse.error_text({"error": {"code": 3007, "message": "timeout"}}) == "3007: timeout"

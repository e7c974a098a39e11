"""examples/ai-agent (tool calling against D1) and examples/ai-extract (JSON Schema mode), unchanged, under
a real ``edgewise dev`` with the AI backend it starts; the built-in 2M model answers for the Workers AI name.

The model writes nonsense, so these check the mechanics: the call validates against the tool's schema and
was run against D1 (the result is what D1 holds), the tool's result went back to the model (the backend's
prompt-token count is that of both turns), and every extracted object validates against the ticket schema.
``start_ai_dev`` comes from conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jsonschema
import pytest

if TYPE_CHECKING:
    from conftest import AiDevServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = "@cf/edgewise/tiny-shakespeare"  # what the examples' @cf/meta/llama-3.1-8b-instruct falls back to
TIMEOUT_S = 30.0
AGENT_SYSTEM_PROMPT = "You are the shop's assistant. Look orders up with find_orders, then answer briefly."
# The contracts the examples' READMEs state, written out here so that a change to either shows.
FIND_ORDERS_PARAMETERS = {
    "type": "object",
    "properties": {"status": {"type": "string", "enum": ["pending", "shipped", "delivered", "cancelled"]},
                   "limit": {"type": "integer", "minimum": 1, "maximum": 3}},
    "required": ["status"],
    "additionalProperties": False,
}
TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 40},
        "product": {"type": "string", "maxLength": 40},
        "category": {"enum": ["bug", "billing", "shipping", "question", "feature_request"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "wants_refund": {"type": "boolean"},
        "order_id": {"type": ["integer", "null"], "minimum": 1, "maximum": 99999999},
    },
    "required": ["customer", "product", "category", "urgency", "wants_refund", "order_id"],
    "additionalProperties": False,
}


def edgewise(*args: str) -> str:
    """One `edgewise` CLI command, as a user runs it; its standard output."""
    done = subprocess.run([sys.executable, "-m", "wrangler_like_cli.main", *args], cwd=EXAMPLES.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"edgewise {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def serve_example(start_ai_dev: Callable[..., AiDevServer]) -> Iterator[Callable[..., AiDevServer]]:
    """``serve_example(name, *dev_args)``: one example (and one backend) at a time, started once."""
    current: dict[tuple[str, ...], AiDevServer] = {}

    def serve(name: str, *extra: str) -> AiDevServer:
        key = (name, *extra)
        if key not in current:
            for server in current.values():
                server.stop()
            current.clear()
            current[key] = start_ai_dev(EXAMPLES / name, *extra)
        return current[key]

    yield serve


@pytest.fixture(scope="module")
def shop_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's D1 database, as its README sets it up: the migrations (table and rows) applied."""
    state = tmp_path_factory.mktemp("ai-agent-state")
    applied = edgewise("d1", "migrations", "apply", "DB", *shop_cli(state))
    assert "0001_create_orders.sql" in applied and "0002_seed_orders.sql" in applied
    return state


def shop_cli(state: Path) -> tuple[str, ...]:
    return ("-c", str(EXAMPLES / "ai-agent" / "wrangler.jsonc"), "--persist-to", str(state), "--local")


def orders_in_d1(state: Path, status: str, limit: int) -> list[dict[str, Any]]:
    """The orders find_orders should have found, read from the database by the CLI."""
    sql = (f"SELECT id, customer, item, placed_at FROM orders WHERE status = '{status}' "
           f"ORDER BY placed_at DESC, id DESC LIMIT {limit}")
    return json.loads(edgewise("d1", "execute", "DB", "--json", "--command", sql, *shop_cli(state)))[0]["results"]


@pytest.fixture
def agent(serve_example: Callable[..., AiDevServer], shop_state: Path) -> AiDevServer:
    return serve_example("ai-agent", "--persist-to", str(shop_state))


@pytest.fixture
def extractor(serve_example: Callable[..., AiDevServer]) -> AiDevServer:
    return serve_example("ai-extract")


# ---- ai-agent ---------------------------------------------------------------------------------


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """How many prompt tokens the backend's built-in model reads for `messages` (its template ignores tools)."""
    from gpu_backend.builtin_models import builtin_model_path
    from gpu_backend.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(builtin_model_path(TINY))
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))


def tool_text(result: dict[str, Any]) -> str:
    """The tool message the README says the model reads: one line per order."""
    return "\n".join(f"Order {order['id']}: {order['item']} for {order['customer']}, placed {order['placed_at']}"
                     for order in result["orders"]) or f"No {result['status']} orders."


@pytest.mark.parametrize("question", ["Which orders are still pending?", "Has Ada's head torch shipped yet?"])
def test_agent_calls_the_tool_on_d1_and_answers(agent: AiDevServer, shop_state: Path, question: str) -> None:
    prompts_before = agent.metric("edgewise_prompt_tokens_total", TINY)
    reply = httpx.post(agent.url + "/ask", json={"question": question}, timeout=TIMEOUT_S)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert set(answer) == {"answer", "steps"} and isinstance(answer["answer"], str)
    assert answer["steps"], "the first turn forces a call (tool_choice: required)"
    for step in answer["steps"]:
        assert step["tool"] == "find_orders"
        jsonschema.validate(step["arguments"], FIND_ORDERS_PARAMETERS)  # the grammar's guarantee
        status, limit = step["arguments"]["status"], step["arguments"].get("limit", 3)
        assert step["result"] == {"status": status, "orders": orders_in_d1(shop_state, status, limit)}

    if len(answer["steps"]) == 1:  # the usual run: one call, then the answer in text
        [step] = answer["steps"]
        first = [{"role": "system", "content": AGENT_SYSTEM_PROMPT}, {"role": "user", "content": question}]
        second = [*first, {"role": "assistant", "content": "", "tool_calls": [
            {"name": "find_orders", "arguments": step["arguments"]}]},
                  {"role": "tool", "name": "find_orders", "content": tool_text(step["result"])}]
        expected = prompt_tokens(first) + prompt_tokens(second)
        read = agent.wait_for_metric("edgewise_prompt_tokens_total", TINY, lambda v: v >= prompts_before + expected)
        assert read - prompts_before == expected  # the second turn read the tool's result


def test_agent_refuses_bad_questions_clearly(agent: AiDevServer) -> None:
    cases = [(b"not json", "the body must be JSON"), (b'{"q": "x"}', 'send {"question": "..."}'),
             (b'{"question": "  "}', "non-empty question"), (json.dumps({"question": "x" * 201}).encode(), "at most 200")]
    for body, says in cases:
        reply = httpx.post(agent.url + "/ask", content=body, timeout=TIMEOUT_S)
        assert reply.status_code == 400 and says in reply.json()["error"], (body, reply.text)
    assert httpx.get(agent.url + "/ask", timeout=TIMEOUT_S).status_code == 405
    assert httpx.get(agent.url + "/", timeout=TIMEOUT_S).status_code == 404


def test_agent_without_its_migrations_says_what_to_run(serve_example: Callable[..., AiDevServer],
                                                        tmp_path: Path) -> None:
    bare = serve_example("ai-agent", "--persist-to", str(tmp_path))
    reply = httpx.post(bare.url + "/ask", json={"question": "What shipped?"}, timeout=TIMEOUT_S)
    assert reply.status_code == 502
    assert "no such table: orders" in reply.json()["error"]
    assert "d1 migrations apply DB --local" in reply.json()["error"]


# ---- ai-extract -------------------------------------------------------------------------------

MESSAGES = [
    "Hi, this is Maria Gomez. My Trail Pack 30 (order 1042) arrived with a broken zipper. I want my money back.",
    "The camp stove app crashes whenever I set a timer. -- Ken",
    "Can I pay by invoice?",
]


def test_extract_answers_tickets_that_validate(extractor: AiDevServer) -> None:
    for text in MESSAGES:
        reply = httpx.post(extractor.url + "/extract", content=text, headers={"content-type": "text/plain"},
                           timeout=TIMEOUT_S)
        assert reply.status_code == 200, reply.text
        jsonschema.validate(reply.json(), TICKET_SCHEMA)
    as_json = httpx.post(extractor.url + "/extract", json={"text": MESSAGES[0]}, timeout=TIMEOUT_S)
    assert as_json.status_code == 200, as_json.text
    jsonschema.validate(as_json.json(), TICKET_SCHEMA)
    served = httpx.get(extractor.url + "/schema", timeout=TIMEOUT_S).json()
    jsonschema.Draft202012Validator.check_schema(served)
    assert served["required"] == TICKET_SCHEMA["required"]


def test_extract_refuses_bad_input_clearly(extractor: AiDevServer) -> None:
    json_body = {"content-type": "application/json"}
    cases = [(b"", {}, "the message is empty"), (b"   \n", {}, "the message is empty"),
             (b"x" * 1001, {}, "at most 1000"), (b'{"text": ', json_body, "the body is not JSON"),
             (b'{"txt": "hi"}', json_body, 'send {"text": "..."}'), (b'["hi"]', json_body, 'send {"text": "..."}')]
    for body, headers, says in cases:
        reply = httpx.post(extractor.url + "/extract", content=body, headers=headers, timeout=TIMEOUT_S)
        assert reply.status_code == 400 and says in reply.json()["error"], (body, reply.text)
    assert httpx.get(extractor.url + "/extract", timeout=TIMEOUT_S).status_code == 405

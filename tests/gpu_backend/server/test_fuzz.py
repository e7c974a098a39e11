"""Property-based fuzzing of every route of a real backend on a socket (the tiny Llama and MiniLM).

Bodies come from the OpenAPI document the backend serves (valid ones, and valid ones with one
field made hostile) and from outside it: random JSON, deep nesting, huge numbers and strings,
lone surrogates, empty stop strings, garbage bytes, under any content type. WebSocket frames are
drawn the same way. Whatever comes in, no answer is a 5xx, every answer is a result its route
documents or an error body, nothing hangs, and afterwards the backend is healthy with nothing
running, no KV block used and every admission slot free. Examples are fixed (derandomized) and
few, with at most 4 tokens per generation, so the run costs seconds of CPU; the counts are printed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from websockets.sync.client import connect

from backend_fixtures import EMBEDDINGS, MODEL, TOKEN, Backend, metric, serving
from gpu_backend.server.api import create_app
from json_strategies import HOSTILE_VALUES, JSON_VALUES, from_schema, hostile_bodies, mutated

HTTP_EXAMPLES = 160
WEBSOCKET_EXAMPLES = 24
MAX_TOKENS = 4  # per generation, so that a valid body costs milliseconds
CLIENT_TIMEOUT_S = 30.0  # an answer later than this is a hang
FUZZ = settings(max_examples=HTTP_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                 "application/json; charset=utf-16", None]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # the template, e.g. /client/v4/accounts/{account_id}/ai/run/{model}
    operation: dict[str, Any]

    def request_schema(self) -> dict[str, Any] | None:
        body = self.operation.get("requestBody")
        return body["content"]["application/json"]["schema"] if body else None


@dataclass
class Target:
    backend: Backend
    app: Any
    document: dict[str, Any]
    tally: Counter[str] = field(default_factory=Counter)

    @property
    def components(self) -> dict[str, Any]:
        return self.document["components"]["schemas"]

    def operations(self) -> list[Operation]:
        return [Operation(method.upper(), path, operation) for path, item in self.document["paths"].items()
                for method, operation in item.items()]


@pytest.fixture(scope="module")
def target(backend: Backend, request: pytest.FixtureRequest) -> Iterator[Target]:
    """A second app on the test backend's engines, so that its admission can be read after the run."""
    app = create_app(backend.engines, TOKEN, max_queue=8)
    with serving(app) as url:
        reply = httpx.get(f"{url}/openapi.json", headers={"authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 200
        fuzzed = Target(Backend(url, backend.engines), app, reply.json())
        yield fuzzed
    counts = ", ".join(f"{key} {count}" for key, count in sorted(fuzzed.tally.items()))
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\nfuzz counts: {counts}")  # for the notes, captured or not


def _body_strategy(target: Target, operation: Operation) -> st.SearchStrategy[bytes]:
    schema = operation.request_schema()
    if schema is None:
        return st.sampled_from([b""]) | JSON_VALUES.map(lambda value: json.dumps(value).encode())
    valid = from_schema(schema, target.components, closed=True).filter(lambda body: isinstance(body, dict))
    keys = sorted({key for option in schema.get("anyOf", [schema]) for key in _properties(option, target)})
    fields = _valid_fields(operation, MODEL, text=True)
    as_json = st.one_of(valid, from_schema(schema, target.components), mutated(valid, keys or ["x"]), JSON_VALUES)
    return st.one_of(as_json.map(_bounded).map(_encode), st.sampled_from(hostile_bodies(fields)),
                     st.binary(max_size=64))


def _valid_fields(operation: Operation, model: str, text: bool) -> dict[str, Any]:
    """The fields of a valid body for ``operation`` on ``model``, for hostile ones to add to or override."""
    named = {} if "{model}" in operation.path else {"model": model}
    if operation.path.endswith("/embeddings") or not text:
        return {**named, "input" if named else "text": "hi"}
    if operation.path.endswith("/chat/completions"):
        return {**named, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return {**named, "prompt": "hi", "max_tokens": 2}


def _properties(schema: dict[str, Any], target: Target) -> list[str]:
    if "$ref" in schema:
        schema = target.components[schema["$ref"].rsplit("/", 1)[1]]
    return list(schema.get("properties", {}))


def _bounded(body: Any) -> Any:
    """``body`` with at most MAX_TOKENS to generate, where it asks for more (or says nothing)."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        too_many = isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS
        if too_many or (key == "max_tokens" and value is None):  # unset: the default would be 256
            body[key] = MAX_TOKENS
    return body


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(body).encode()
    except ValueError:  # an int past Python's 4,300-digit limit
        return b"{}"


def _url(operation: Operation, model: str, account: str) -> str:
    """The path, with ``account`` and ``model`` quoted (a slash in the account or a newline in the model
    leaves a path no route takes)."""
    return operation.path.replace("{account_id}", quote(account, safe="")).replace("{model}", quote(model, safe="@/"))


@st.composite
def _requests(draw: st.DrawFn, target: Target) -> tuple[Operation, str, bytes, str | None]:
    operation = draw(st.sampled_from(target.operations()))
    served = target.backend.engines.model_names()
    model = draw(st.sampled_from([*served, "a\nb", "@cf/../x"]) | st.text(max_size=12))
    account = draw(st.sampled_from(["acct", "a" * 32, "a/b", "%"]) | st.text(min_size=1, max_size=8))
    body = draw(_body_strategy(target, operation)) if operation.method == "POST" else b""
    return operation, _url(operation, model, account), body, draw(st.sampled_from(CONTENT_TYPES))


def test_every_route_answers_every_body_without_a_5xx(target: Target) -> None:
    with httpx.Client(base_url=target.backend.url, headers=target.backend.headers(), timeout=CLIENT_TIMEOUT_S) as client:

        @FUZZ
        @given(_requests(target))
        def one_request(drawn: tuple[Operation, str, bytes, str | None]) -> None:
            operation, url, body, content_type = drawn
            headers = {"content-type": content_type} if content_type else {}
            reply = client.request(operation.method, url, content=body, headers=headers)
            target.tally["http requests"] += 1
            target.tally[f"http {reply.status_code // 100}xx"] += 1
            _check(target, operation, reply)

        one_request()


def test_every_hostile_body_on_every_route_gets_a_4xx(target: Target) -> None:
    """Not left to chance: each hostile body goes to each POST route, for each model it may name."""
    served = target.backend.engines.model_names()
    with httpx.Client(base_url=target.backend.url, headers=target.backend.headers(), timeout=CLIENT_TIMEOUT_S) as client:
        for operation in target.operations():
            if operation.method != "POST":
                continue
            for model in served:
                fields = _valid_fields(operation, model, text=model != EMBEDDINGS)
                for body in hostile_bodies(fields):
                    reply = client.post(_url(operation, model, "acct"), content=body)
                    target.tally["http requests"] += 1
                    target.tally[f"http {reply.status_code // 100}xx"] += 1
                    _check(target, operation, reply)


@pytest.mark.parametrize(("method", "path", "code"), [
    ("GET", "/client/v4/accounts/a/b/ai/run/@cf/x", 404), ("POST", "/v1/nowhere", 404), ("GET", "/nowhere", 404),
    ("POST", "/client/v4/accounts/a/ai/run/a%0Ab", 404), ("GET", "/v1/chat/completions", 405),
    ("DELETE", "/client/v4/accounts/a/ai/run/@cf/x", 405), ("POST", "/metrics", 405)])
def test_paths_no_route_takes_get_the_error_body_of_their_api(target: Target, method: str, path: str,
                                                             code: int) -> None:
    reply = httpx.request(method, target.backend.url + path, headers=target.backend.headers())
    assert reply.status_code == code
    if "/v1/" in path:
        assert reply.json()["error"]["code"] == 7000 and path in reply.json()["error"]["message"]
    else:
        assert reply.json()["errors"][0]["code"] == 7000 and "No route for that URI" in reply.text


def _check(target: Target, operation: Operation, reply: httpx.Response) -> None:
    assert reply.status_code < 500, (operation.path, reply.status_code, reply.text[:500])
    media = reply.headers.get("content-type", "")
    if reply.status_code == 200 and media.startswith("text/event-stream"):
        _check_events(reply.text)
        return
    if media.startswith("text/plain") and operation.path == "/metrics":
        return
    documented = operation.operation["responses"].get(str(reply.status_code))
    assert documented is not None, (operation.path, reply.status_code, reply.text[:300])
    schema = documented["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": target.document["components"]})
    errors = [error.message for error in validator.iter_errors(reply.json())]
    assert not errors, (operation.path, reply.status_code, errors[:3], reply.text[:300])


def _check_events(text: str) -> None:
    events = [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]
    assert events, text[:300]
    for event in events:
        assert event == "[DONE]" or isinstance(json.loads(event), dict), event[:200]


def _frame(target: Target) -> st.SearchStrategy[str | bytes]:
    schemas = target.components
    valid = st.one_of([from_schema(schemas[name], schemas, closed=True) for name in ("PromptInput", "MessagesInput")])
    keys = [*schemas["PromptInput"]["properties"], "messages"]
    as_json = st.one_of(valid, mutated(valid, keys), JSON_VALUES, HOSTILE_VALUES).map(_bounded).map(_encode)
    hostile = st.sampled_from(hostile_bodies({}))
    return st.one_of(as_json.map(lambda body: body.decode()), hostile.map(lambda body: body.decode("latin-1")),
                     st.binary(max_size=32))


def test_every_websocket_frame_gets_an_answer_and_the_connection_stays_open(target: Target) -> None:
    url = target.backend.run_url().replace("http://", "ws://")

    @settings(FUZZ, max_examples=WEBSOCKET_EXAMPLES)
    @given(st.lists(_frame(target), min_size=1, max_size=3))
    def one_connection(frames: list[str | bytes]) -> None:
        with connect(url, additional_headers=target.backend.headers(), max_size=None, open_timeout=10) as ws:
            for frame in [*frames, json.dumps({"prompt": "still open?", "max_tokens": 2})]:
                ws.send(frame)
                last = _until_done(ws)
                target.tally["websocket frames"] += 1
                target.tally["websocket " + ("error frames" if "error" in last else "generations")] += 1
            assert "error" not in last, last  # the connection still serves

    one_connection()


def test_every_hostile_frame_gets_one_error_frame(target: Target) -> None:
    url = target.backend.run_url().replace("http://", "ws://")
    with connect(url, additional_headers=target.backend.headers(), max_size=None, open_timeout=10) as ws:
        for body in hostile_bodies({}):
            for frame in (body.decode("latin-1"), body):
                ws.send(frame)
                last = _until_done(ws)
                target.tally["websocket frames"] += 1
                target.tally["websocket " + ("error frames" if "error" in last else "generations")] += 1
        ws.send(json.dumps({"prompt": "still open?", "max_tokens": 2}))
        assert "error" not in _until_done(ws)


def _until_done(ws: Any) -> dict[str, Any]:
    while True:
        payload = json.loads(ws.recv(timeout=CLIENT_TIMEOUT_S))
        assert isinstance(payload, dict), payload
        if "error" in payload:
            assert isinstance(payload["error"]["code"], int) and payload["error"]["message"], payload
            assert payload.get("done") is True, payload  # one error frame per bad frame
        if payload.get("done"):
            return payload


def test_afterwards_the_backend_is_healthy_and_holds_nothing(target: Target) -> None:
    backend = target.backend
    assert httpx.get(f"{backend.url}/healthz").json()["status"] == "ok"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(stats["num_running"] or stats["kv_blocks_used"]
                                              for stats in backend.engines.stats().values()):
        time.sleep(0.05)
    models = backend.engines.model_names()
    admission = target.app.state.service.admission
    target.tally["running after"] = sum(int(metric(backend.url, "edgewise_requests_running", model)) for model in models)
    target.tally["kv blocks used after"] = sum(int(metric(backend.url, "edgewise_kv_blocks_used", model))
                                               for model in models)
    target.tally["slots held after"] = sum(admission.in_flight(model) for model in models)
    assert target.tally["running after"] == target.tally["kv blocks used after"] == 0
    assert target.tally["slots held after"] == 0

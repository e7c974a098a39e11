"""Workers AI's REST routes over a real socket: envelope, streaming, model names, errors, auth, search, metrics."""

from __future__ import annotations

import json

import cloudflare
import httpx
import pytest

from backend_fixtures import EMBEDDINGS, MODEL, Backend
from gpu_backend import LLM
from gpu_backend.server.schemas import parse_text_generation

GREEDY = {"prompt": "Once upon a time", "raw": True, "temperature": 0, "max_tokens": 12}


def expected_text(offline: LLM, body: dict) -> str:
    sampling = parse_text_generation(body, MODEL).sampling
    if body.get("raw"):
        return offline.generate(body["prompt"], sampling)[0].text
    return offline.chat(body["messages"], sampling)[0].text


def sse_payloads(raw: str) -> list[str]:
    assert raw.endswith("\n\n"), "every event ends with a blank line"
    events = raw[:-2].split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    return [event[len("data: "):] for event in events]


def test_run_without_content_type_answers_the_envelope_with_llm_greedy_text(backend: Backend, offline: LLM) -> None:
    reply = httpx.post(backend.run_url(), content=json.dumps(GREEDY), headers=backend.headers())
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    assert body["result"]["response"] == expected_text(offline, GREEDY)
    usage = body["result"]["usage"]
    assert usage["completion_tokens"] == 12 and usage["total_tokens"] == usage["prompt_tokens"] + 12


def test_model_name_with_quoted_slashes_routes_the_same(backend: Backend) -> None:
    plain = httpx.post(backend.run_url(), json=GREEDY, headers=backend.headers()).json()
    quoted = httpx.post(backend.run_url(MODEL.replace("/", "%2F")), json=GREEDY, headers=backend.headers()).json()
    assert quoted == plain


def test_messages_go_through_the_chat_template(backend: Backend, offline: LLM) -> None:
    body = {"messages": [{"role": "user", "content": "Hello"}], "temperature": 0, "max_tokens": 8}
    reply = httpx.post(backend.run_url(), json=body, headers=backend.headers()).json()
    assert reply["result"]["response"] == expected_text(offline, body)


def test_stream_is_raw_sse_with_usage_then_done(backend: Backend, offline: LLM) -> None:
    with httpx.stream("POST", backend.run_url(), json={**GREEDY, "stream": True}, headers=backend.headers()) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        raw = reply.read().decode()
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    events = [json.loads(p) for p in payloads[:-1]]
    assert all(set(e) == {"response"} for e in events[:-1])
    assert events[-1]["response"] == "" and events[-1]["usage"]["completion_tokens"] == 12
    assert "".join(e["response"] for e in events) == expected_text(offline, GREEDY)


def test_responses_style_input_is_answered_as_output(backend: Backend) -> None:
    body = {"instructions": "Be brief.", "input": "Hello", "temperature": 0, "max_tokens": 4}
    result = httpx.post(backend.run_url(), json=body, headers=backend.headers()).json()["result"]
    assert result["object"] == "response" and result["status"] == "incomplete"
    assert result["output"][0]["content"][0]["type"] == "output_text"
    assert result["usage"]["output_tokens"] == 4


def test_embeddings_have_shape_and_unit_rows(backend: Backend) -> None:
    reply = httpx.post(backend.run_url(EMBEDDINGS), json={"text": ["a cat", "a dog", "stocks fell"]},
                       headers=backend.headers()).json()
    result = reply["result"]
    assert result["shape"] == [3, 384] and len(result["data"]) == 3
    assert all(abs(sum(x * x for x in row) - 1) < 1e-4 for row in result["data"])
    single = httpx.post(backend.run_url(EMBEDDINGS), json={"text": "a cat"}, headers=backend.headers()).json()
    assert single["result"]["shape"] == [1, 384]
    assert single["result"]["data"][0] == pytest.approx(result["data"][0], abs=1e-5)


@pytest.mark.parametrize(("body", "status", "code", "text"), [
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 400, 5006, "mutually exclusive"),
    ({"prompt": "hi", "temperature": 9}, 400, 5006, "'temperature' must be between 0 and 5"),
    ({"prompt": "hi", "response_format": {"type": "json_object"}, "stream": True}, 400, 5006,
     "JSON mode does not stream"),
    ({"prompt": "word " * 400, "raw": True}, 413, 5021, "max_model_len"),
    ({"prompt": "hi", "lora": "x"}, 405, 5005, "LoRa"),
])
def test_bad_inputs_are_enveloped_errors(backend: Backend, body: dict, status: int, code: int, text: str) -> None:
    reply = httpx.post(backend.run_url(), json=body, headers=backend.headers())
    assert reply.status_code == status
    error = reply.json()
    assert error["result"] is None and error["success"] is False and error["messages"] == []
    assert error["errors"][0]["code"] == code and text in error["errors"][0]["message"]


def test_unknown_model_is_5007_and_invalid_json_is_bad_input(backend: Backend) -> None:
    reply = httpx.post(backend.run_url("@cf/meta/nope"), json={"prompt": "hi"}, headers=backend.headers())
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["message"].startswith("No such model @cf/meta/nope or task")
    assert reply.json()["errors"][0]["code"] == 5007
    broken = httpx.post(backend.run_url(), content=b"{not json", headers=backend.headers())
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["errors"][0]["message"]


def test_auth_is_required_everywhere_but_health(backend: Backend) -> None:
    missing = httpx.post(backend.run_url(), json=GREEDY)
    assert missing.status_code == 401
    assert missing.json()["errors"] == [{"code": 10000, "message": missing.json()["errors"][0]["message"]}]
    assert missing.json()["errors"][0]["message"].startswith("Authentication error")
    wrong = httpx.post(backend.run_url(), json=GREEDY, headers=backend.headers("nope"))
    assert wrong.status_code == 403 and wrong.json()["errors"][0]["code"] == 10000
    assert httpx.get(f"{backend.url}/metrics").status_code == 401
    assert httpx.get(f"{backend.url}/v1/models").status_code == 401
    health = httpx.get(f"{backend.url}/healthz")
    assert health.status_code == 200 and health.json()["models"] == [MODEL, EMBEDDINGS]


def test_models_search_pages_end_with_an_empty_result(backend: Backend) -> None:
    search = f"{backend.url}/client/v4/accounts/acct/ai/models/search"
    first = httpx.get(search, params={"page": 1, "per_page": 50}, headers=backend.headers()).json()
    assert [m["name"] for m in first["result"]] == [MODEL, EMBEDDINGS]
    assert first["result"][0]["task"]["name"] == "Text Generation"
    assert first["result"][1]["task"]["id"] == "0137cdcf-162a-4108-94f2-1ca59e8c65ee"
    assert httpx.get(search, params={"page": 2}, headers=backend.headers()).json()["result"] == []
    second = httpx.get(search, params={"page": 2, "per_page": 1}, headers=backend.headers()).json()
    assert [m["name"] for m in second["result"]] == [EMBEDDINGS]
    by_task = httpx.get(search, params={"task": "Text Embeddings"}, headers=backend.headers()).json()
    assert [m["name"] for m in by_task["result"]] == [EMBEDDINGS]


def test_official_cloudflare_sdk_runs_models_and_lists_them(backend: Backend, offline: LLM) -> None:
    client = cloudflare.Cloudflare(api_token="test-token", base_url=f"{backend.url}/client/v4", max_retries=0)
    result = client.ai.run(MODEL, account_id="acct", prompt=GREEDY["prompt"], raw=True, temperature=0,
                           max_tokens=12)
    assert result["response"] == expected_text(offline, GREEDY)
    assert [model["name"] for model in client.ai.models.list(account_id="acct")] == [MODEL, EMBEDDINGS]
    embedded = client.ai.run(EMBEDDINGS, account_id="acct", text=["hello"])
    assert embedded["shape"] == [1, 384]
    with pytest.raises(cloudflare.BadRequestError, match="5007"):
        client.ai.run("@cf/meta/nope", account_id="acct", prompt="hi")
    bad = cloudflare.Cloudflare(api_token="nope", base_url=f"{backend.url}/client/v4", max_retries=0)
    with pytest.raises(cloudflare.PermissionDeniedError):
        bad.ai.run(MODEL, account_id="acct", prompt="hi")

"""OpenAI's Responses API through the real SDK's ``client.responses.create``: plain and streamed answers,
``text.format`` JSON schemas, ``max_output_tokens`` cut-offs, item-list input, function calls and their
outputs, the errors of bad bodies, and the Workers AI run route's Responses-style answer, which must
have the same ``output``.

Greedy answers are compared with chat completions of the same conversation: a Responses body is a
chat request spelled differently, so the two must give the same text. The model ends on a special
token (structured_fixtures.py), so JSON answers and forced calls end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from jsonschema import Draft202012Validator

from backend_fixtures import MODEL, Backend
from structured_fixtures import special_eos_backend

GREEDY = {"temperature": 0}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer", "minimum": 0, "maximum": 99},
                   "mood": {"enum": ["calm", "angry"]}},
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "name": "get_weather", "description": "The forecast for a city", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1,
                                                                                   "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_END = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def backend(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with special_eos_backend(checkpoints["llama"], tmp_path_factory.mktemp("responses") / "llama") as backend:
        yield backend


@pytest.fixture(scope="module")
def client(backend: Backend) -> openai.OpenAI:
    return backend.openai_client()


def _chat_text(client: openai.OpenAI, messages: list[dict[str, Any]], max_tokens: int, **extra: Any) -> str:
    answer = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, **GREEDY, **extra)
    return answer.choices[0].message.content or ""


def _without_ids(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in item.items() if key not in ("id", "call_id")} for item in output]


# -- whole answers -------------------------------------------------------------------------------

def test_a_response_is_the_chat_answer_of_the_same_conversation(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Tell me a story.", instructions="Be brief.",
                                       max_output_tokens=12, **GREEDY)
    expected = _chat_text(client, [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Tell me a story."}], 12)
    assert response.output_text == expected and expected
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    assert response.instructions == "Be brief." and response.max_output_tokens == 12 and response.temperature == 0
    [message] = response.output
    assert (message.type, message.role, message.id[:4]) == ("message", "assistant", "msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens >= 0
    assert (response.status == "completed") == (usage.output_tokens < 12)
    assert response.parallel_tool_calls is True and response.tools == [] and response.tool_choice == "auto"


def test_the_cap_cuts_the_answer_short_as_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Count to a hundred.", max_output_tokens=2,
                                       extra_body={"ignore_eos": True}, **GREEDY)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 2 and response.output[0].status == "incomplete"
    assert response.completed_at is None


def test_an_item_list_is_the_conversation_it_spells(client: openai.OpenAI) -> None:
    items = [{"role": "developer", "content": "Answer in verse."},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is "},
                                                             {"type": "input_text", "text": "love?"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A rose."}]},
             {"role": "user", "content": "And hate?"}]
    response = client.responses.create(model=MODEL, input=items, max_output_tokens=10, **GREEDY)
    messages = [{"role": "system", "content": "Answer in verse."}, {"role": "user", "content": "What is love?"},
                {"role": "assistant", "content": "A rose."}, {"role": "user", "content": "And hate?"}]
    assert response.output_text == _chat_text(client, messages, 10)
    other = client.responses.create(model=MODEL, input=items[:2], max_output_tokens=10, **GREEDY)
    assert other.output_text == _chat_text(client, messages[:2], 10)


def test_a_json_schema_answer_parses_and_validates(client: openai.OpenAI) -> None:
    text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    response = client.responses.create(model=MODEL, input="Describe a person.", text=text, max_output_tokens=200,
                                       temperature=1.0)
    assert response.status == "completed", response.output_text
    jsonschema.validate(json.loads(response.output_text), PERSON)
    assert response.text.format.type == "json_schema" and response.text.format.name == "person"
    anything = client.responses.create(model=MODEL, input="Anything.", text={"format": {"type": "json_object"}},
                                       max_output_tokens=200, **GREEDY)
    assert anything.text.format.type == "json_object" and anything.output_text.startswith("{")
    if anything.status == "completed":  # a random model's free-form key may run past the cap
        assert isinstance(json.loads(anything.output_text), dict)


def test_the_openai_routes_under_the_account_answer_too(backend: Backend, client: openai.OpenAI) -> None:
    account = backend.openai_client("/client/v4/accounts/acct/ai/v1")
    asked = {"model": MODEL, "input": "Hello", "max_output_tokens": 6, **GREEDY}
    assert account.responses.create(**asked).output_text == client.responses.create(**asked).output_text


# -- streams -------------------------------------------------------------------------------------

def test_a_stream_sends_the_typed_events_in_order_and_adds_up_to_the_whole_answer(client: openai.OpenAI) -> None:
    asked = {"model": MODEL, "input": "Tell me a story.", "instructions": "Be brief.", "max_output_tokens": 12,
             **GREEDY}
    whole = client.responses.create(**asked)
    events = list(client.responses.create(**asked, stream=True))
    kinds = [event.type for event in events]
    num_deltas = kinds.count("response.output_text.delta")
    final = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert kinds == [*TEXT_EVENTS, *["response.output_text.delta"] * num_deltas, *TEXT_END, final] and num_deltas
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    text = "".join(event.delta for event in deltas)
    assert text == whole.output_text
    item_id = events[2].item.id
    assert {(event.item_id, event.output_index, event.content_index) for event in deltas} == {(item_id, 0, 0)}
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    done = events[-1].response
    assert done.output_text == text and done.status == whole.status
    counts = ("input_tokens", "output_tokens", "total_tokens")  # cached_tokens: the second run hits the prefix cache
    assert [getattr(done.usage, name) for name in counts] == [getattr(whole.usage, name) for name in counts]
    assert events[-2].item.status == whole.output[0].status and events[-4].text == text


def test_a_streamed_json_schema_answer_validates(client: openai.OpenAI) -> None:
    text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON}}
    events = list(client.responses.create(model=MODEL, input="Describe a person.", text=text, max_output_tokens=200,
                                          stream=True))
    assert events[-1].type == "response.completed"
    jsonschema.validate(json.loads(events[-1].response.output_text), PERSON)


def test_a_stream_cut_at_the_cap_ends_incomplete(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Count.", max_output_tokens=2, stream=True,
                                          extra_body={"ignore_eos": True}))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].item.status == "incomplete"


# -- function calls ------------------------------------------------------------------------------

def test_a_forced_call_is_a_function_call_item_and_its_output_continues_the_conversation(
        client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required",
                                       parallel_tool_calls=False, max_output_tokens=100, **GREEDY)
    [call] = response.output
    assert (call.type, call.name, call.status) == ("function_call", "get_weather", "completed")
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    assert response.tools[0].name == "get_weather" and response.tool_choice == "required"
    named = client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER], max_output_tokens=100,
                                    tool_choice={"type": "function", "name": "get_weather"}, **GREEDY)
    assert [item.type for item in named.output] == ["function_call"]

    follow_up = [{"role": "user", "content": "Weather in Paris?"},
                 {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                 {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    answer = client.responses.create(model=MODEL, input=follow_up, tools=[WEATHER], tool_choice="none",
                                     max_output_tokens=10, **GREEDY)
    chat = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"}]
    tools = [{"type": "function", "function": {key: WEATHER[key] for key in ("name", "description", "parameters")}}]
    assert answer.output_text == _chat_text(client, chat, 10, tools=tools, tool_choice="none")


def test_a_streamed_call_adds_up_to_the_whole_one(client: openai.OpenAI) -> None:
    asked = {"model": MODEL, "input": "Weather in Oslo?", "tools": [WEATHER], "tool_choice": "required",
             "parallel_tool_calls": False, "max_output_tokens": 100, **GREEDY}
    [whole] = client.responses.create(**asked).output
    events = list(client.responses.create(**asked, stream=True))
    kinds = [event.type for event in events]
    num_deltas = kinds.count("response.function_call_arguments.delta")
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * num_deltas,
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    added, done = events[2].item, events[-2].item
    assert (added.type, added.name, added.arguments, added.status) == ("function_call", "get_weather", "", "in_progress")
    arguments = "".join(event.delta for event in events if event.type == "response.function_call_arguments.delta")
    assert arguments == events[-3].arguments == done.arguments == whole.arguments
    assert done.call_id == added.call_id and events[-1].response.output[0].arguments == arguments


# -- the Workers AI route's Responses-style answer ------------------------------------------------

def test_the_run_routes_responses_style_answer_has_the_same_output(backend: Backend, client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Tell me a story.", instructions="Be brief.",
                                       max_output_tokens=12, **GREEDY)
    reply = backend.run({"instructions": "Be brief.", "input": "Tell me a story.", "max_tokens": 12, **GREEDY})
    assert reply.status_code == 200, reply.text
    result = reply.json()["result"]
    assert _without_ids(result["output"]) == _without_ids(response.model_dump(mode="json", exclude_unset=True)["output"])
    # How many prompt tokens the prefix cache held depends on what ran before, so only that count may differ.
    usage, expected = result["usage"], response.usage.model_dump(mode="json", exclude_unset=True)
    cached = [side.pop("input_tokens_details")["cached_tokens"] for side in (usage, expected)]
    assert usage == expected and all(0 <= count <= usage["input_tokens"] for count in cached)
    assert (result["object"], result["status"], result["model"]) == ("response", response.status, MODEL)


def test_the_run_routes_responses_style_call_is_the_same_item(backend: Backend, client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required",
                                       parallel_tool_calls=False, max_output_tokens=100, **GREEDY)
    reply = backend.run({"input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": "required",
                         "parallel_tool_calls": False, "max_tokens": 100, **GREEDY})
    assert reply.status_code == 200, reply.text
    assert _without_ids(reply.json()["result"]["output"]) == _without_ids(response.model_dump(mode="json", exclude_unset=True)["output"])


def test_the_run_route_takes_function_call_items_as_the_responses_route_does(
        backend: Backend, client: openai.OpenAI) -> None:
    items = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
             {"role": "user", "content": "Weather in Paris?"},
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"}]
    response = client.responses.create(model=MODEL, input=items, tools=[WEATHER], tool_choice="none",
                                       max_output_tokens=10, **GREEDY)
    reply = backend.run({"input": items, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 10, **GREEDY})
    assert reply.status_code == 200, reply.text
    result = reply.json()["result"]
    assert _without_ids(result["output"]) == _without_ids(response.model_dump(mode="json", exclude_unset=True)["output"])
    assert result["usage"]["input_tokens"] == response.usage.input_tokens  # the same conversation reached the model
    bad = backend.run({"input": [{"type": "function_call_output", "output": "x"}]})
    assert bad.status_code == 400 and "'input[0].call_id' must be a non-empty string" in bad.text


def test_answers_and_bodies_are_what_the_openapi_document_says(backend: Backend) -> None:
    document = httpx.get(f"{backend.url}/openapi.json", headers=backend.headers()).json()
    components = document["components"]
    operation = document["paths"]["/v1/responses"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    result = operation["responses"]["200"]["content"]["application/json"]["schema"]
    alarm = {"type": "function", "name": "set_alarm", "parameters": {  # in the schema subset the document promises
        "type": "object", "properties": {"on": {"type": "boolean"}}, "additionalProperties": False}}
    bodies = [{"model": MODEL, "input": "Hi", "max_output_tokens": 2},
              {"model": MODEL, "input": "Alarm?", "tools": [alarm], "tool_choice": "required", "max_output_tokens": 50}]
    for body in bodies:
        assert Draft202012Validator({**request, "components": components}).is_valid(body)
        answer = httpx.post(f"{backend.url}/v1/responses", json={**body, **GREEDY}, headers=backend.headers(),
                            timeout=60).json()
        errors = [error.message for error in Draft202012Validator({**result, "components": components}
                                                                  ).iter_errors(answer)]
        assert not errors, (errors[:3], answer)
    refused = {"model": MODEL, "input": "Hi", "tools": [alarm], "tool_choice": "required",
               "text": {"format": {"type": "json_object"}}}
    assert not Draft202012Validator({**request, "components": components}).is_valid(refused)
    reply = httpx.post(f"{backend.url}/v1/responses", json=refused, headers=backend.headers(), timeout=30)
    assert reply.status_code == 400 and "send one of them" in reply.text


# -- bad bodies ----------------------------------------------------------------------------------

BAD = [  # (body, param, what the message says)
    ({"model": MODEL}, "input", "'input' is required"),
    ({"model": MODEL, "input": []}, "input", "'input' is required"),
    ({"model": MODEL, "input": [{"type": "web_search_call", "id": "ws_1"}]}, "input", "'input[0]' must be a message"),
    ({"model": MODEL, "input": [{"role": "robot", "content": "hi"}]}, "input", "'input[0].role' must be"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input",
     "text only"),
    ({"model": MODEL, "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}, "input",
     "'input[0].arguments' must be a JSON object"),
    ({"model": MODEL, "input": [{"type": "function_call_output", "output": "x"}]}, "input", "'input[0].call_id'"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "schema": PERSON}}}, "text",
     "'text.format.name' is required"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "p", "schema": "person"}}},
     "text", "'text.format.schema' must be a JSON schema"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "p"}}}, "text",
     "'text.format.schema' is required"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "xml"}}}, "text", "'text.format.type' must be"),
    ({"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "p", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}}, None, "missing"),
    ({"model": MODEL, "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
    ({"model": MODEL, "input": "hi", "store": True}, "store", "'store' must be false"),
    ({"model": MODEL, "input": "hi", "background": True}, "background", "'background' must be false"),
    ({"model": MODEL, "input": "hi", "truncation": "auto"}, "truncation", "never drops input"),
    ({"model": MODEL, "input": "hi", "include": ["file_search_call.results"]}, "include", "'include' may list"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": 0}, "max_output_tokens", "at least 1"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}, "tools", "must be \"function\""),
    ({"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice", "not in 'tools'"),
    ({"model": MODEL, "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, "tool_choice",
     "'tool_choice' must be"),
    ({"input": "hi"}, "model", "'model' is required"),
]


@pytest.mark.parametrize(("body", "param", "message"), BAD, ids=[message for *_, message in BAD])
def test_bad_bodies_get_openai_error_bodies(backend: Backend, body: dict[str, Any], param: str | None,
                                            message: str) -> None:
    reply = httpx.post(f"{backend.url}/v1/responses", json=body, headers=backend.headers(), timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"], error
    if param is not None:
        assert error["param"] == param


def test_the_sdk_raises_bad_request_and_harmless_fields_are_accepted(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert refused.value.body["param"] == "previous_response_id"
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=3, store=False, user="u1",
                                       metadata={"run": "7"}, truncation="disabled", reasoning={"effort": "low"},
                                       include=["reasoning.encrypted_content"], **GREEDY)
    assert response.metadata == {"run": "7"} and response.store is False


def test_logprobs_come_when_included(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=4, top_logprobs=2,
                                       include=["message.output_text.logprobs"], **GREEDY)
    part = response.output[0].content[0]
    assert len(part.logprobs) == response.usage.output_tokens
    assert all(len(item.top_logprobs) == 2 and item.logprob <= 0 for item in part.logprobs)

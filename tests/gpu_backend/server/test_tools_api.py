"""Tool calling on both APIs: Workers AI's traditional ``tools`` -> ``tool_calls: [{name, arguments}]``,
OpenAI's ``tools``/``tool_choice``/``parallel_tool_calls`` -> ``message.tool_calls`` (through the real SDK,
whole and streamed), tool results rendered through the chat template, and the errors of bad tools.

The test model answers as Llama 3 (its template is Llama 3's: JSON calls) and, with a Qwen-style
template, as Hermes (``<tool_call>`` blocks). A forced call (``required`` or a named function) is made
by the grammar, so the tests that expect one hold once the engine enforces ``SamplingParams.structured``;
parameter schemas keep values short so a random model's call fits. The models end on a special token
and take 2048 positions (structured_fixtures.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudflare
import jsonschema
import openai
import pytest
import websockets

from backend_fixtures import MODEL, TOKEN, Backend, served_backend
from structured_fixtures import special_eos_copy
from gpu_backend.server.client import render_prompt
from gpu_backend.server.errors import BadInputError
from gpu_backend.server.schemas import parse_text_generation
from gpu_backend.server.tools import Tool, ToolChoice

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Oslo", "Lima"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
ALARM_PARAMETERS = {
    "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"], "additionalProperties": False}
WEATHER = {"name": "get_weather", "description": "The forecast for a city", "parameters": WEATHER_PARAMETERS}
ALARM = {"name": "set_alarm", "description": "Turn the alarm on or off", "parameters": ALARM_PARAMETERS}
OPENAI_TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": ALARM}]
PARAMETERS = {"get_weather": WEATHER_PARAMETERS, "set_alarm": ALARM_PARAMETERS}
MESSAGES = [{"role": "user", "content": "Will it rain in Paris?"}]
HERMES_MODEL = "@cf/test/hermes"
# Qwen2.5's layout, cut down: tools in <tools></tools>, calls in <tool_call></tool_call>, results as tool_response.
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call a function inside <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
def backend(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    root = tmp_path_factory.mktemp("tools")
    models = {MODEL: special_eos_copy(checkpoints["llama"], root / "llama"),
              HERMES_MODEL: special_eos_copy(checkpoints["llama"], root / "hermes", chat_template=HERMES_TEMPLATE)}
    with served_backend(models, device="cpu", dtype="float32", num_kv_blocks=512, max_model_len=2048) as backend:
        yield backend


@pytest.fixture(scope="module")
def client(backend: Backend) -> openai.OpenAI:
    return backend.openai_client()


def assert_valid_call(name: str, arguments: dict[str, Any], allowed: tuple[str, ...] = tuple(PARAMETERS)) -> None:
    assert name in allowed
    jsonschema.validate(arguments, PARAMETERS[name])


# -- reading tools -------------------------------------------------------------------------------

def test_both_tool_shapes_become_one_tool() -> None:
    traditional = parse_text_generation({"messages": MESSAGES, "tools": [WEATHER]}, MODEL)
    openai_shape = parse_text_generation({"messages": MESSAGES, "tools": [OPENAI_TOOLS[0]]}, MODEL, dialect="openai")
    assert traditional.tools == openai_shape.tools == (Tool("get_weather", "The forecast for a city", WEATHER_PARAMETERS),)
    assert traditional.tool_choice == ToolChoice("auto") and traditional.parallel_tool_calls
    named = parse_text_generation({"messages": MESSAGES, "tools": OPENAI_TOOLS, "parallel_tool_calls": False,
                                   "tool_choice": {"type": "function", "function": {"name": "set_alarm"}}}, MODEL)
    assert named.tool_choice == ToolChoice("function", "set_alarm") and not named.parallel_tool_calls


@pytest.mark.parametrize(("body", "match"), [
    ({"tools": {"name": "f"}}, "'tools' must be a list"),
    ({"tools": [{"description": "no name"}]}, r"'tools\[0\].name' must be 1 to 64"),
    ({"tools": [{"name": "f", "parameters": "x"}]}, r"'tools\[0\].parameters' must be a JSON schema object"),
    ({"tools": [{"name": "f", "parameters": {"type": "array"}}]}, r"'tools\[0\].parameters.type' must be \"object\""),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
     r"'tools\[0\].function.parameters' must be a JSON schema"),
    ({"tools": [{"name": "f", "parameters": {"type": "object", "properties": []}}]}, "properties' must be an object"),
    ({"tools": [{"type": "retrieval"}]}, r"'tools\[0\].type' must be \"function\""),
    ({"tools": [WEATHER, WEATHER]}, "two tools named 'get_weather'"),
    ({"tool_choice": "required"}, "'tool_choice' needs 'tools'"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "names 'get_time', which is not in 'tools' \\(they are: get_weather\\)"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "'tool_choice' must be \"auto\", \"none\", \"required\""),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "'parallel_tool_calls' must be true or false"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "send one of them"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
     "arguments must be a JSON object"),
])
def test_bad_tools_say_what_to_fix(body: dict[str, Any], match: str) -> None:
    with pytest.raises(BadInputError, match=match) as caught:
        parse_text_generation({"messages": MESSAGES, **body}, MODEL)
    assert caught.value.status == 400


def test_each_model_gets_the_parser_of_its_template(backend: Backend) -> None:
    assert backend.engines.model_info(MODEL).tool_format == "llama3_json"
    assert backend.engines.model_info(HERMES_MODEL).tool_format == "hermes"


def test_tools_and_tool_turns_reach_the_chat_template(backend: Backend) -> None:
    """Tools go to the template as transformers passes ``tools=``; call arguments as objects; tool results
    with their ``tool_call_id``."""
    conversation = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 12 C"},
    ]
    inputs = parse_text_generation({"messages": conversation, "tools": OPENAI_TOOLS}, MODEL, dialect="openai")
    assert inputs.messages[1]["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "days": 1}}}]
    assert inputs.messages[2] == {"role": "tool", "content": "Rain, 12 C", "tool_call_id": "call_1"}
    engine = backend.engines.engine(MODEL)
    prompt = engine.tokenizer.decode(render_prompt(engine, inputs), skip_special_tokens=False)
    expected = engine.tokenizer.apply_chat_template(inputs.messages, tools=[t.for_template() for t in inputs.tools])
    assert prompt == expected
    assert '"name": "get_weather"' in prompt and "The forecast for a city" in prompt and "Rain, 12 C" in prompt
    hermes = backend.engines.engine(HERMES_MODEL)
    prompt = hermes.tokenizer.decode(render_prompt(hermes, inputs), skip_special_tokens=False)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>' in prompt
    assert "<tool_response>\nRain, 12 C\n</tool_response>" in prompt
    reply = backend.run({"messages": conversation, "tools": [WEATHER], "max_tokens": 4})
    assert reply.status_code == 200, reply.text


# -- Workers AI ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tools", [[WEATHER], [{"type": "function", "function": WEATHER}]], ids=["traditional", "openai"])
def test_workers_ai_forced_call_returns_tool_calls(backend: Backend, tools: list) -> None:
    reply = backend.run({"messages": MESSAGES, "tools": tools, "tool_choice": "required", "max_tokens": 200,
                          "temperature": 0, "parallel_tool_calls": False})
    assert reply.status_code == 200, reply.text
    result = reply.json()["result"]
    [call] = result["tool_calls"]
    assert set(call) == {"name", "arguments"} and isinstance(call["arguments"], dict)
    assert_valid_call(call["name"], call["arguments"])
    assert result["response"] == ""


def test_workers_ai_stream_ends_with_the_calls(backend: Backend) -> None:
    body = {"messages": MESSAGES, "tools": [WEATHER, ALARM], "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 200, "temperature": 0}
    whole = backend.run(body).json()["result"]
    streamed = backend.run({**body, "stream": True}).text
    events = [json.loads(e[len("data: "):]) for e in streamed.strip().split("\n\n") if e != "data: [DONE]"]
    calls = [event["tool_calls"] for event in events if "tool_calls" in event]
    assert calls == [whole["tool_calls"]] and len(whole["tool_calls"]) == 1
    assert "".join(event["response"] for event in events) == whole["response"] == ""
    assert streamed.endswith("data: [DONE]\n\n") and events[-1]["usage"] == whole["usage"]


async def test_websocket_frames_carry_the_forced_call(backend: Backend) -> None:
    body = {"messages": MESSAGES, "tools": [WEATHER, ALARM], "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 200, "temperature": 0}
    whole = backend.run(body).json()["result"]
    url = backend.run_url().replace("http://", "ws://")
    async with websockets.connect(url, additional_headers=backend.headers()) as socket:
        await socket.send(json.dumps(body))
        frames = []
        while not frames or not frames[-1].get("done"):
            frames.append(json.loads(await asyncio.wait_for(socket.recv(), 10)))
    assert [frame["tool_calls"] for frame in frames if "tool_calls" in frame] == [whole["tool_calls"]]
    assert frames[-1]["usage"] == whole["usage"]


def test_official_cloudflare_sdk_gets_tool_calls(backend: Backend) -> None:
    client = cloudflare.Cloudflare(api_token=TOKEN, base_url=f"{backend.url}/client/v4", max_retries=0)
    result = client.ai.run(MODEL, account_id="acct", messages=MESSAGES, tools=[WEATHER], max_tokens=200,
                           temperature=0, extra_body={"tool_choice": "required", "parallel_tool_calls": False})
    [call] = result["tool_calls"]
    assert_valid_call(call["name"], call["arguments"])


def test_workers_ai_bad_tools_are_enveloped(backend: Backend) -> None:
    reply = backend.run({"messages": MESSAGES, "tools": [{"name": "f", "parameters": 7}]})
    assert reply.status_code == 400 and reply.json()["errors"][0]["code"] == 5006
    assert "'tools[0].parameters' must be a JSON schema object" in reply.json()["errors"][0]["message"]


# -- OpenAI --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [MODEL, HERMES_MODEL])
def test_required_returns_calls_with_ids(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(model=model, messages=MESSAGES, tools=OPENAI_TOOLS,
                                                tool_choice="required", max_tokens=200, temperature=0,
                                                parallel_tool_calls=False)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert_valid_call(call.function.name, json.loads(call.function.arguments))
    assert len({call.id for call in choice.message.tool_calls}) == len(choice.message.tool_calls)


def test_named_function_is_the_one_called(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=OPENAI_TOOLS, max_tokens=120, temperature=0, parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "set_alarm"}})
    [call] = completion.choices[0].message.tool_calls
    assert call.function.name == "set_alarm"
    assert_valid_call("set_alarm", json.loads(call.function.arguments), ("set_alarm",))
    assert completion.choices[0].message.content is None


# With parallel calls allowed the grammar lets a call follow a call, and the random model often goes on
# until max_tokens: these seeds are ones with which it stops (a real model stops when it is done).
@pytest.mark.parametrize(("model", "parallel", "seed"), [(MODEL, False, None), (HERMES_MODEL, False, None),
                                                        (MODEL, True, 4), (HERMES_MODEL, True, 1)])
def test_streamed_tool_call_deltas_reassemble_to_the_whole_answer(client: openai.OpenAI, model: str,
                                                                   parallel: bool, seed: int | None) -> None:
    request = {"model": model, "messages": MESSAGES, "tools": OPENAI_TOOLS, "tool_choice": "required",
               "parallel_tool_calls": parallel, "max_tokens": 300, "temperature": 0 if seed is None else 1.0,
               "seed": seed}
    whole = client.chat.completions.create(**request).choices[0]
    chunks = [chunk for chunk in client.chat.completions.create(**request, stream=True) if chunk.choices]
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.index not in calls:  # OpenAI's first delta of a call: id, type, name, empty arguments
                assert delta.id and delta.type == "function" and delta.function.name and delta.function.arguments == ""
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": "", "pieces": 0}
            else:
                assert delta.id is None and delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments
                calls[delta.index]["pieces"] += 1
    assert [(c["name"], c["arguments"]) for c in calls.values()] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(c["pieces"] > 1 for c in calls.values())  # the arguments stream as they are generated
    assert len(calls) >= 1 if parallel else len(calls) == 1
    for call in calls.values():
        assert_valid_call(call["name"], json.loads(call["arguments"]))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == (whole.message.content or "")
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "tool_calls"


@pytest.mark.parametrize("tool_choice", ["none", "auto"])
def test_unforced_answers_are_text_unless_they_hold_a_call(client: openai.OpenAI, tool_choice: str) -> None:
    """The random model writes no call of its own: the answer is its text, and the stream matches it."""
    request = {"model": MODEL, "messages": MESSAGES, "tools": OPENAI_TOOLS, "tool_choice": tool_choice,
               "max_tokens": 12, "temperature": 0}
    whole = client.chat.completions.create(**request).choices[0]
    assert whole.message.tool_calls is None and whole.finish_reason in ("stop", "length")
    streamed = [c for c in client.chat.completions.create(**request, stream=True) if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole.message.content
    assert streamed[-1].choices[0].finish_reason == whole.finish_reason


def test_openai_bad_tools_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=OPENAI_TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "launch"}})
    assert caught.value.body["param"] == "tool_choice" and "'launch'" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="'tool_choice' needs 'tools'"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="must be a JSON schema object"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[
            {"type": "function", "function": {"name": "f", "parameters": "not a schema"}}])

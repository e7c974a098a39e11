"""JSON mode and JSON Schema on both APIs: Workers AI's ``response_format`` (``response`` answered as an
object), OpenAI's (the real SDK's ``chat.completions.parse`` with a Pydantic model), streams, cut-offs
and the errors of bad schemas.

The answers come from the tiny random Llama, so only the grammar makes them valid JSON: the tests
that check an answer parses and validates hold once the engine enforces ``SamplingParams.structured``.
Schemas keep every value short (enums, bounded integers, short strings, short arrays) so a random
model's answer fits in a few dozen tokens; the model ends on a special token (structured_fixtures.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import cloudflare
import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from backend_fixtures import MODEL, TOKEN, Backend
from structured_fixtures import random_schema, special_eos_backend
from gpu_backend.engine.structured_output import StructuredOutput
from gpu_backend.errors import InvalidRequestError
from gpu_backend.server.errors import BadInputError
from gpu_backend.server.schemas import parse_text_generation
from gpu_backend.server.structured import json_answer

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "mood": {"enum": ["calm", "angry"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "age", "mood", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe a person."}]
UNCOMPILABLE = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    guilty: bool
    mood: Literal["calm", "angry", "sad"]
    years: int = Field(ge=0, le=9)


@pytest.fixture(scope="module")
def backend(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with special_eos_backend(checkpoints["llama"], tmp_path_factory.mktemp("structured") / "llama") as backend:
        yield backend


@pytest.fixture(scope="module")
def client(backend: Backend) -> openai.OpenAI:
    return backend.openai_client()


# -- reading response_format ---------------------------------------------------------------------

@pytest.mark.parametrize(("response_format", "dialect", "expected"), [
    ({"type": "json_object"}, "workers-ai", StructuredOutput.json_object()),
    ({"type": "json_schema", "json_schema": PERSON}, "workers-ai", StructuredOutput("json_schema", json.dumps(PERSON))),
    ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}, "workers-ai",
     StructuredOutput("json_schema", json.dumps(PERSON))),
    ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}, "openai",
     StructuredOutput("json_schema", json.dumps(PERSON))),
    ({"type": "json_schema", "json_schema": {"name": "anything"}}, "openai", StructuredOutput.json_object()),
    ({"type": "json_object"}, "openai", StructuredOutput.json_object()),
    ({"type": "text"}, "openai", None),
    ({"type": "text"}, "workers-ai", None),
])
def test_response_format_becomes_the_engines_constraint(response_format: dict, dialect: str,
                                                        expected: StructuredOutput | None) -> None:
    parsed = parse_text_generation({"messages": MESSAGES, "response_format": response_format}, MODEL, dialect=dialect)
    assert parsed.sampling.structured == expected and parsed.response_format == expected


def test_schema_keeps_its_property_order() -> None:
    """llguidance writes properties in the schema's order; the answer's keys come in the order asked."""
    schema = {"type": "object", "properties": {"zeta": {"type": "boolean"}, "alpha": {"type": "boolean"}}}
    parsed = parse_text_generation({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": schema}},
                                   MODEL)
    assert list(json.loads(parsed.sampling.structured.spec)["properties"]) == ["zeta", "alpha"]


@pytest.mark.parametrize(("response_format", "dialect", "match"), [
    ("json", "workers-ai", "'response_format' must be an object"),
    ({"type": "yaml"}, "workers-ai", "'response_format.type' must be \"json_object\", \"json_schema\" or \"text\""),
    ({"type": "json_schema"}, "workers-ai", "'response_format.json_schema' is required"),
    ({"type": "json_schema", "json_schema": "a schema"}, "workers-ai", "must be a JSON schema: an object"),
    ({"type": "json_schema", "json_schema": [1]}, "workers-ai", "must be a JSON schema"),
    ({"type": "json_schema", "json_schema": {"type": "dict"}}, "workers-ai", "'response_format.json_schema.type' must "
                                                                             "name JSON types"),
    ({"type": "json_schema", "json_schema": {"schema": PERSON}}, "openai", "'response_format.json_schema.name' is "
                                                                          "required"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}}, "openai", "json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": 3}}, "openai", "json_schema.schema' must be a "
                                                                                   "JSON schema"),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": "yes"}}, "openai", "strict"),
    ({"type": "json_schema", "json_schema": PERSON}, "openai", "json_schema.name' is required"),
])
def test_bad_response_formats_say_what_to_fix(response_format: Any, dialect: str, match: str) -> None:
    with pytest.raises(BadInputError, match=match) as caught:
        parse_text_generation({"prompt": "x", "response_format": response_format}, MODEL, dialect=dialect)
    assert caught.value.param == "response_format" and caught.value.status == 400


def test_json_mode_does_not_stream_on_workers_ai_but_does_on_openai() -> None:
    body = {"prompt": "x", "stream": True, "response_format": {"type": "json_object"}}
    with pytest.raises(BadInputError, match="JSON mode does not stream on Workers AI"):
        parse_text_generation(body, MODEL)
    assert parse_text_generation(body, MODEL, dialect="openai").stream


def test_a_cut_json_answer_says_so() -> None:
    assert json_answer('{"a": [1, 2]}', "stop", 10) == {"a": [1, 2]}
    with pytest.raises(BadInputError, match=r"JSON Mode couldn't be met: the answer was cut off at max_tokens \(4\)"):
        json_answer('{"a": [1', "length", 4)
    with pytest.raises(BadInputError, match="after 3 tokens, where the model's context window ends"):
        json_answer('{"a": [1', "length", 256, 3)


# -- Workers AI ----------------------------------------------------------------------------------

def test_workers_ai_answers_response_as_an_object(backend: Backend) -> None:
    reply = backend.run({"messages": MESSAGES, "max_tokens": 120, "temperature": 0,
                          "response_format": {"type": "json_schema", "json_schema": PERSON}})
    assert reply.status_code == 200, reply.text
    result = reply.json()["result"]
    assert isinstance(result["response"], dict)
    jsonschema.validate(result["response"], PERSON)
    assert result["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_random_schemas_validate(backend: Backend, seed: int) -> None:
    schema = random_schema(random.Random(seed))
    reply = backend.run({"prompt": "Fill the form.", "max_tokens": 150, "temperature": 0.8, "seed": seed + 1,
                          "response_format": {"type": "json_schema", "json_schema": schema}})
    assert reply.status_code == 200, reply.text
    jsonschema.validate(reply.json()["result"]["response"], schema)


def test_official_cloudflare_sdk_gets_an_object(backend: Backend) -> None:
    client = cloudflare.Cloudflare(api_token=TOKEN, base_url=f"{backend.url}/client/v4", max_retries=0)
    result = client.ai.run(MODEL, account_id="acct", messages=MESSAGES, max_tokens=120, temperature=0,
                           response_format={"type": "json_schema", "json_schema": PERSON})
    jsonschema.validate(result["response"], PERSON)


def test_json_object_mode_answers_an_object_or_says_it_was_cut(backend: Backend) -> None:
    reply = backend.run({"prompt": "Any JSON.", "max_tokens": 100, "temperature": 0,
                          "response_format": {"type": "json_object"}})
    if reply.status_code == 200:
        assert isinstance(reply.json()["result"]["response"], dict)
    else:  # a random model may write one long string: the cut-off is named, not a broken object
        assert reply.status_code == 400
        assert "JSON Mode couldn't be met: the answer was cut off at max_tokens (100)" in reply.text


def test_workers_ai_refuses_json_mode_streams(backend: Backend) -> None:
    reply = backend.run({"prompt": "x", "stream": True, "response_format": {"type": "json_object"}})
    assert reply.status_code == 400 and reply.headers["content-type"].startswith("application/json")
    assert reply.json()["errors"][0]["code"] == 5006 and "does not stream" in reply.json()["errors"][0]["message"]


def test_uncompilable_schema_is_400_with_the_reason(backend: Backend, client: openai.OpenAI) -> None:
    reply = backend.run({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": UNCOMPILABLE}})
    assert reply.status_code == 400, reply.text
    assert reply.json()["errors"][0]["code"] == 5006 and "missing" in reply.json()["errors"][0]["message"]
    for stream in (False, True):  # refused before a stream begins: an ordinary 400, not a broken stream
        with pytest.raises(openai.BadRequestError, match="missing"):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream, response_format={
                "type": "json_schema", "json_schema": {"name": "bad", "schema": UNCOMPILABLE}})


def test_engine_refusal_is_mapped_to_bad_input() -> None:
    """What the engine raises for a schema its grammar library rejects is a 400 with the library's reason."""
    from gpu_backend.server.errors import from_engine_error
    error = from_engine_error(InvalidRequestError("the JSON schema does not compile: Pointer '/$defs/x' does not exist"))
    assert isinstance(error, BadInputError) and error.status == 400 and "Pointer" in error.message


# -- OpenAI --------------------------------------------------------------------------------------

def test_openai_sdk_parse_returns_the_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Verdict,
                                               max_tokens=60, temperature=0)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Verdict) and completion.choices[0].finish_reason == "stop"
    assert Verdict.model_validate_json(message.content) == message.parsed


def test_openai_streams_the_json_text(client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=120, temperature=0,
                                           response_format=response_format)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=120, temperature=0,
                                                 response_format=response_format, stream=True))
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content
    jsonschema.validate(json.loads(streamed), PERSON)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_cut_off_json_says_length(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0,
                                                response_format={"type": "json_schema",
                                                                 "json_schema": {"name": "s", "schema": schema}})
    assert completion.choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model=MODEL, messages=MESSAGES, max_tokens=3, response_format=Verdict)


def test_openai_errors_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                       response_format={"type": "json_schema", "json_schema": {"schema": PERSON}})
    assert caught.value.body["param"] == "response_format" and "name' is required" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="'response_format.type' must be"):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={"type": "xml"})

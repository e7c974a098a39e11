"""``edgewise ai models`` and ``edgewise ai run``, in-process (CliRunner), against a backend at --url and without one."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner, Result

from gpu_backend import LLM, SamplingParams
from gpu_backend.builtin_models import BUILTIN_MODELS, builtin_model_path
from gpu_backend.server.background import local_backend
from wrangler_like_cli.main import cli

SHAKESPEARE = "@cf/edgewise/tiny-shakespeare"
MINILM = "@cf/sentence-transformers/all-minilm-l6-v2"
OPTIONS = {"device": "cpu", "dtype": "float32"}
GREEDY = ("--max-tokens", "5", "--temperature", "0")
NO_BACKEND_ENV = {"EDGEWISE_BACKEND_URL": None, "EDGEWISE_BACKEND_TOKEN": None}


@pytest.fixture(scope="module")
def backend() -> Iterator[tuple[str, str]]:
    """(url, token) of the built-in models served on a thread."""
    with local_backend(dict(BUILTIN_MODELS), **OPTIONS) as served:
        yield served


def invoke(*args: str, backend: tuple[str, str] | None = None) -> Result:
    env = {"EDGEWISE_BACKEND_URL": backend[0], "EDGEWISE_BACKEND_TOKEN": backend[1]} if backend else NO_BACKEND_ENV
    return CliRunner().invoke(cli, ["ai", *args], prog_name="edgewise", env=env)


def rest_run(backend: tuple[str, str], model: str, inputs: dict[str, object]) -> dict[str, object]:
    url, token = backend
    reply = httpx.post(f"{url}/client/v4/accounts/acct/ai/run/{model}", json=inputs,
                       headers={"authorization": f"Bearer {token}"}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["result"]


def test_models_without_a_url_loads_and_lists_the_builtins() -> None:
    result = invoke("models", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(SHAKESPEARE in line and "Text Generation" in line and "256" in line for line in lines)
    assert any(MINILM in line and "Text Embeddings" in line for line in lines)


def test_models_json_and_filters(backend: tuple[str, str]) -> None:
    result = invoke("models", "--json", backend=backend)
    assert result.exit_code == 0, result.output
    assert sorted(model["name"] for model in json.loads(result.stdout)) == [SHAKESPEARE, MINILM]
    only_embeddings = invoke("models", "--json", "--task", "text-embeddings", backend=backend)
    assert [model["name"] for model in json.loads(only_embeddings.stdout)] == [MINILM]


def test_run_prints_the_greedy_text_of_the_rest_api_and_the_engine(backend: tuple[str, str]) -> None:
    result = invoke("run", SHAKESPEARE, "--prompt", "ROMEO:", *GREEDY, backend=backend)
    assert result.exit_code == 0, result.output
    rest = rest_run(backend, SHAKESPEARE, {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0})
    llm = LLM(str(builtin_model_path(SHAKESPEARE)), progress=False, **OPTIONS)
    offline = llm.chat([{"role": "user", "content": "ROMEO:"}], SamplingParams(temperature=0.0, max_tokens=5))
    assert rest["usage"]["completion_tokens"] == 5
    assert result.stdout == rest["response"] + "\n" == offline[0].text + "\n"


def test_run_without_a_url_equals_the_served_backend(backend: tuple[str, str]) -> None:
    served = invoke("run", SHAKESPEARE, "--prompt", "ROMEO:", *GREEDY, backend=backend)
    in_process = invoke("run", SHAKESPEARE, "--prompt", "ROMEO:", *GREEDY, "--device", "cpu", "--dtype", "float32")
    assert in_process.exit_code == 0, in_process.output
    assert in_process.stdout == served.stdout


def test_stream_prints_the_same_text_as_one_reply(backend: tuple[str, str]) -> None:
    whole = invoke("run", SHAKESPEARE, "--prompt", "ROMEO:", "--max-tokens", "12", "--temperature", "0",
                   backend=backend)
    streamed = invoke("run", SHAKESPEARE, "--prompt", "ROMEO:", "--max-tokens", "12", "--temperature", "0",
                      "--stream", backend=backend)
    assert streamed.exit_code == 0, streamed.output
    assert streamed.stdout == whole.stdout and len(whole.stdout.strip()) > 0


def test_stream_json_prints_each_event_then_usage(backend: tuple[str, str]) -> None:
    result = invoke("run", SHAKESPEARE, "--prompt", "ROMEO:", *GREEDY, "--stream", "--json", backend=backend)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[-1]["response"] == "" and events[-1]["usage"]["completion_tokens"] == 5
    assert "".join(event["response"] for event in events) == rest_run(
        backend, SHAKESPEARE, {"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0})["response"]


def test_messages_are_a_conversation(backend: tuple[str, str]) -> None:
    messages = [{"role": "system", "content": "Speak as a king."}, {"role": "user", "content": "KING:"}]
    result = invoke("run", SHAKESPEARE, "--messages", json.dumps(messages), *GREEDY, backend=backend)
    assert result.exit_code == 0, result.output
    expected = rest_run(backend, SHAKESPEARE, {"messages": messages, "max_tokens": 5, "temperature": 0})
    assert result.stdout == expected["response"] + "\n"


def test_text_prints_the_embeddings_shape_and_json_the_vectors(backend: tuple[str, str]) -> None:
    result = invoke("run", MINILM, "--text", "To be, or not to be", backend=backend)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "shape [1, 384]"
    as_json = json.loads(invoke("run", MINILM, "--text", "a", "--text", "b", "--json", backend=backend).stdout)
    assert as_json["shape"] == [2, 384]
    assert all(math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-4) for vector in as_json["data"])


def test_unknown_model_prints_the_backend_code_and_exits_1(backend: tuple[str, str]) -> None:
    result = invoke("run", "@cf/meta/no-such-model", "--prompt", "hi", backend=backend)
    assert result.exit_code == 1
    assert "5007: No such model @cf/meta/no-such-model" in result.output
    streamed = invoke("run", "@cf/meta/no-such-model", "--prompt", "hi", "--stream", backend=backend)
    assert streamed.exit_code == 1 and "5007" in streamed.output


def test_a_wrong_token_is_an_authentication_error(backend: tuple[str, str]) -> None:
    result = invoke("models", backend=(backend[0], "wrong"))
    assert result.exit_code == 1
    assert "10000: Authentication error" in result.output


def test_an_unreachable_backend_is_a_clear_error() -> None:
    result = invoke("models", backend=("http://127.0.0.1:9", "t"))
    assert result.exit_code == 1
    assert "the backend at http://127.0.0.1:9 failed" in result.output


@pytest.mark.parametrize("args", [(), ("--prompt", "a", "--text", "b"), ("--text", "b", "--stream")])
def test_inputs_must_be_one_kind(args: tuple[str, ...]) -> None:
    result = invoke("run", SHAKESPEARE, *args, backend=("http://127.0.0.1:9", "t"))
    assert result.exit_code == 2

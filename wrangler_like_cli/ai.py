"""``edgewise ai``: list a backend's models and run one, through the backend's Workers AI REST API.

With ``--url`` (or ``EDGEWISE_BACKEND_URL``) the commands call that backend. Without one they
load the built-in models (and the ``--model`` mappings) into this process, serve them on
127.0.0.1 for the length of the command, and call them over HTTP all the same, so both modes
take one code path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import click
import httpx
from rich.table import Table

from .output import console, err_console, fail

ACCOUNT_ID = "edgewise"  # a local backend serves one account, whatever its id
RUN_PATH = "/client/v4/accounts/{account}/ai/run/{model}"
SEARCH_PATH = "/client/v4/accounts/{account}/ai/models/search"
PER_PAGE = 50  # wrangler's page size; a shorter page is the last
TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)
PREVIEW_VALUES = 4  # embedding values shown per vector without --json


class BackendCallError(Exception):
    """A refused or failed call; ``str()`` is the backend's "<code>: <message>" when it gave a code."""


@dataclass(frozen=True)
class BackendOptions:
    url: str | None
    token: str | None
    models: tuple[str, ...]  # NAME=PATH or NAME, for the in-process backend
    device: str
    dtype: str


def backend_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that choose the backend, gathered into one ``backend: BackendOptions`` argument."""

    @click.option("--url", envvar="EDGEWISE_BACKEND_URL", show_envvar=True,
                  help="A running backend (`edgewise backend serve`); default: load the models in this process.")
    @click.option("--token", envvar="EDGEWISE_BACKEND_TOKEN", show_envvar=True, help="The backend's bearer token.")
    @click.option("--model", "-m", "models", multiple=True, metavar="NAME[=PATH]",
                  help="Without --url: also serve PATH (a Hugging Face folder or a built-in model) as NAME "
                       "(repeatable).")
    @click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                  help="Without --url: where the models run.")
    @click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                  show_default=True, help="Without --url: the weights' dtype.")
    @functools.wraps(command)
    def wrapper(url: str | None, token: str | None, models: tuple[str, ...], device: str, dtype: str,
                **kwargs: Any) -> None:
        command(backend=BackendOptions(url, token, models, device, dtype), **kwargs)

    return wrapper


@click.group()
def ai() -> None:
    """Workers AI from the shell: list the models a backend serves and run one."""


@ai.command()
@click.option("--search", help="Only models whose name contains this.")
@click.option("--task", help='Only this task: "text-generation", "Text Embeddings" or a task id.')
@click.option("--json", "as_json", is_flag=True, help="Print the catalog entries as JSON.")
@backend_options
def models(backend: BackendOptions, search: str | None, task: str | None, as_json: bool) -> None:
    """List the models: name, task and context window (tokens)."""
    params = {key: value for key, value in (("search", search), ("task", task)) if value}
    try:
        with connect(backend, wanted=None) as client:
            catalog = list_models(client, params)
    except BackendCallError as error:
        fail(str(error))
    if as_json:
        click.echo(json.dumps(catalog, indent=2))
        return
    table = Table("name", "task", "context")
    for model in catalog:
        table.add_row(model["name"], model["task"]["name"], _context(model))
    console.print(table)


@ai.command()
@click.argument("model")
@click.option("--prompt", help="Text generation: the prompt (rendered with the model's chat template).")
@click.option("--messages", "messages_json", metavar="JSON",
              help='Text generation: the conversation, e.g. \'[{"role": "user", "content": "Hi"}]\'.')
@click.option("--text", "texts", multiple=True, help="Embeddings: a text to embed (repeatable).")
@click.option("--max-tokens", type=click.IntRange(1), help="Tokens to generate at most (Workers AI default: 256).")
@click.option("--temperature", type=click.FloatRange(0.0, 5.0), help="0 is greedy (Workers AI default: 0.6).")
@click.option("--seed", type=click.IntRange(1, 9_999_999_999), help="Seed for sampling.")
@click.option("--stream", is_flag=True, help="Print the text as it is generated.")
@click.option("--json", "as_json", is_flag=True, help="Print the result (with --stream: each event) as JSON.")
@backend_options
def run(backend: BackendOptions, model: str, prompt: str | None, messages_json: str | None, texts: tuple[str, ...],
        max_tokens: int | None, temperature: float | None, seed: int | None, stream: bool, as_json: bool) -> None:
    """Run MODEL once: --prompt or --messages for text generation, --text for embeddings."""
    inputs = _inputs(prompt, messages_json, texts, stream)
    inputs.update({key: value for key, value in (("max_tokens", max_tokens), ("temperature", temperature),
                                                 ("seed", seed)) if value is not None})
    try:
        with connect(backend, wanted=model) as client:
            if stream:
                _print_stream(stream_model(client, model, inputs), as_json)
            else:
                _print_result(run_model(client, model, inputs), as_json)
    except BackendCallError as error:
        fail(str(error))


# ---- the backend ----------------------------------------------------------------------------


@contextmanager
def connect(backend: BackendOptions, wanted: str | None) -> Iterator[httpx.Client]:
    """An HTTP client for the backend: the one at --url, or one loaded here for the command's length."""
    with ExitStack() as stack:
        url, token = backend.url, backend.token
        if not url:
            from gpu_backend.server.background import local_backend

            models = _local_models(backend.models, wanted)
            with err_console.status(f"loading {', '.join(models)}…"):
                url, token = stack.enter_context(local_backend(models, device=backend.device, dtype=backend.dtype))
        yield stack.enter_context(_client(url, token))


def _local_models(specs: tuple[str, ...], wanted: str | None) -> dict[str, Any]:
    """name -> folder: the built-ins and the mappings, or only ``wanted`` when it is one of them."""
    from gpu_backend.builtin_models import BUILTIN_MODELS
    from gpu_backend.server.serve import resolve_models

    try:
        models = resolve_models([*sorted(BUILTIN_MODELS), *specs])
    except ValueError as error:
        fail(str(error))
    # one model loads in about half the time of all; an unknown name gets them all, to list in its 5007
    return {wanted: models[wanted]} if wanted in models else models


def _client(url: str, token: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=TIMEOUT)


def list_models(client: httpx.Client, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every catalog entry, page by page as wrangler asks for them."""
    catalog: list[dict[str, Any]] = []
    for page in range(1, 1000):
        result = _result(_call(client, "GET", SEARCH_PATH.format(account=ACCOUNT_ID),
                               params={**params, "page": page, "per_page": PER_PAGE}))
        catalog.extend(result)
        if len(result) < PER_PAGE:
            break
    return catalog


def run_model(client: httpx.Client, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return _result(_call(client, "POST", _run_path(model), json=inputs))


def stream_model(client: httpx.Client, model: str, inputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events of a streamed run as dicts, up to ``[DONE]``; an error event raises BackendCallError."""
    try:
        with client.stream("POST", _run_path(model), json=inputs) as response:
            if response.status_code >= 400:
                response.read()
                raise BackendCallError(_error_text(response))
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise BackendCallError(f"not a Workers AI event: {data[:200]}") from None
                if "error" in event:
                    raise BackendCallError(_code_message(event["error"]))
                yield event
    except httpx.HTTPError as error:
        raise BackendCallError(f"the backend at {client.base_url} failed: {error}") from error
    raise BackendCallError("the stream ended without [DONE]: the answer is cut off")


def _run_path(model: str) -> str:
    return RUN_PATH.format(account=ACCOUNT_ID, model=quote(model, safe="@/"))


def _call(client: httpx.Client, method: str, path: str, **request: Any) -> httpx.Response:
    try:
        response = client.request(method, path, **request)
    except httpx.HTTPError as error:
        raise BackendCallError(f"the backend at {client.base_url} failed: {error}") from error
    if response.status_code >= 400:
        raise BackendCallError(_error_text(response))
    return response


def _result(response: httpx.Response) -> Any:
    try:
        return response.json()["result"]
    except (ValueError, KeyError, TypeError):
        raise BackendCallError(f"not a Workers AI reply: {response.text[:200]}") from None


def _error_text(response: httpx.Response) -> str:
    """The envelope's first error as "<code>: <message>", else the status and body."""
    try:
        return _code_message(response.json()["errors"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def _code_message(error: dict[str, Any]) -> str:
    return f"{error['code']}: {error['message']}" if error.get("code") is not None else str(error.get("message"))


# ---- inputs and output ----------------------------------------------------------------------


def _inputs(prompt: str | None, messages_json: str | None, texts: tuple[str, ...], stream: bool) -> dict[str, Any]:
    given = [name for name, value in (("--prompt", prompt), ("--messages", messages_json), ("--text", texts))
             if value]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --prompt, --messages (text generation) and --text (embeddings)")
    if texts:
        if stream:
            raise click.UsageError("--stream is for text generation; embeddings come back whole")
        return {"text": list(texts)}
    if prompt:
        return {"prompt": prompt, "stream": stream}
    try:
        messages = json.loads(messages_json or "")
    except ValueError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint="--messages") from None
    return {"messages": messages, "stream": stream}


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    elif "shape" in result:
        click.echo(f"shape {json.dumps(result['shape'])}")
        for index, vector in enumerate(result["data"]):
            shown = ", ".join(f"{value:.4f}" for value in vector[:PREVIEW_VALUES])
            click.echo(f"{index}: [{shown}, … {len(vector) - PREVIEW_VALUES} more]")
    else:
        click.echo(result.get("response", ""))


def _print_stream(events: Iterator[dict[str, Any]], as_json: bool) -> None:
    for event in events:
        if as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
        elif event.get("response"):
            click.echo(event["response"], nl=False)  # click.echo flushes: each piece shows as it arrives
    if not as_json:
        click.echo()


def _context(model: dict[str, Any]) -> str:
    for prop in model.get("properties", []):
        if prop.get("property_id") in ("context_window", "max_input_tokens"):
            return str(prop.get("value"))
    return ""

"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``.

Requests are translated into Workers AI inputs and checked by the same schemas, so a field has
one meaning and one error message on every route. Defaults are Workers AI's (``max_tokens``
256), except ``temperature``, which is OpenAI's 1.0. Streams are OpenAI's chunk SSE ending in
``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk. Embeddings honour
``encoding_format: "base64"`` (little-endian float32), which the OpenAI SDK asks for by default.
``response_format`` takes OpenAI's spelling; JSON answers stream as text. The answers' shapes, whole
and streamed, are chat_completion.py's.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .body import read_json
from .chat_completion import CompletionFrames, completion_events
from .errors import BadInputError
from .generation import Generation, unless_disconnected
from ..engine.sampling_params import MAX_LOGPROBS
from .request_scope import resources
from .schemas import SESSION_HEADER, parse_embeddings, parse_stop, parse_text_generation
from .streaming import EventStream
from .workers_ai import embed, reject_if_busy, served_model

if TYPE_CHECKING:
    from .api import Service

OPENAI_DEFAULT_TEMPERATURE = 1.0
_PASSED_THROUGH = ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty",
                   "repetition_penalty", "stream", "raw", "response_format", "functions", "ignore_eos", "max_tokens",
                   "max_completion_tokens", "n", "logit_bias", "reasoning_effort")
_CHAT_ONLY = ("tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs")


async def chat_completions(request: Request) -> Response | EventStream:
    return await _complete(request, chat=True)


async def completions(request: Request) -> Response | EventStream:
    return await _complete(request, chat=False)


async def _complete(request: Request, chat: bool) -> Response | EventStream:
    service: Service = request.app.state.service
    body = json_object(await read_json(request, service.limits))
    requested = requested_model(body, service)
    model = served_model(request, requested)
    inputs = parse_text_generation(_workers_ai_inputs(body, chat), requested, request.headers.get(SESSION_HEADER),
                                   service.limits, dialect="openai")
    inputs = replace(inputs, sampling=replace(inputs.sampling, stop=parse_stop(body.get("stop"), service.limits)))
    include_usage = _include_usage(body)  # checked before the generation starts, as every input is
    if reject_if_busy(body):  # Workers AI's top-level "options"; no await until Generation holds its slot
        service.admission.refuse_if_busy(model)
    generation = await resources(request).enter_async_context(Generation(service, model, inputs))
    chunk = CompletionFrames(requested, chat)  # the name the client asked for, as OpenAI echoes it
    if inputs.stream:
        return EventStream(completion_events(generation, chunk, include_usage))
    completion = await unless_disconnected(request, generation.complete())
    return JSONResponse(chunk.answer(inputs, completion, generation.tool_parser))


async def embeddings(request: Request) -> Response:
    service: Service = request.app.state.service
    body = json_object(await read_json(request, service.limits))
    requested = requested_model(body, service)
    model = served_model(request, requested)
    given = body.get("input")
    inputs = parse_embeddings({"text": given} if given is not None else {}, service.limits)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadInputError(f"'encoding_format' must be \"float\" or \"base64\", got {encoding!r}",
                            param="encoding_format")
    result = await embed(request, model, inputs, reject_if_busy(body))
    data = [{"object": "embedding", "index": index, "embedding": _encode(vector, encoding)}
            for index, vector in enumerate(result.vectors)]
    return JSONResponse({"object": "list", "data": data, "model": requested,
                         "usage": {"prompt_tokens": result.num_tokens, "total_tokens": result.num_tokens}})


async def list_models(request: Request) -> Response:
    service: Service = request.app.state.service
    created = int(service.started_at)
    data = [{"id": name, "object": "model", "created": created, "owned_by": "edgewise"}
            for name in service.client.model_names()]
    return JSONResponse({"object": "list", "data": data})


def _workers_ai_inputs(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    if body.get("echo"):
        raise BadInputError("'echo' is not supported: remove it (the answer holds the new text only)", param="echo")
    inputs = {key: body[key] for key in _PASSED_THROUGH if key in body}
    inputs.setdefault("temperature", OPENAI_DEFAULT_TEMPERATURE)
    if chat:
        inputs["messages"] = body.get("messages")
        inputs.update({key: body[key] for key in _CHAT_ONLY if key in body})
    else:
        inputs["prompt"] = _prompt(body.get("prompt"))
        inputs["raw"] = True  # a completion continues the text as given
        inputs.update(_legacy_logprobs(body.get("logprobs")))
    return inputs


def _legacy_logprobs(logprobs: Any) -> dict[str, Any]:
    """Completions' ``logprobs: N`` (the N most likely tokens at each step) as the chat spelling."""
    if logprobs is None:
        return {}
    if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_LOGPROBS:
        raise BadInputError(f"'logprobs' must be an integer between 0 and {MAX_LOGPROBS} on /v1/completions, got "
                            f"{logprobs!r}", param="logprobs")
    return {"logprobs": True, "top_logprobs": logprobs}


def _prompt(prompt: Any) -> Any:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list):
        raise BadInputError("'prompt' must be one string: batches of prompts are not supported", param="prompt")
    return prompt


def _include_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``: whether a stream ends with a usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadInputError("'stream_options' must be an object such as {\"include_usage\": true}",
                            param="stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise BadInputError(f"'stream_options.include_usage' must be true or false, got {include_usage!r}",
                            param="stream_options")
    return include_usage


def requested_model(body: dict[str, Any], service: Service) -> str:
    """The body's ``model``: a printable name (which model serves it is ``served_model``'s question)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadInputError(f"'model' is required: one of {', '.join(service.client.model_names())}", param="model")
    if not model.isprintable():  # control characters or lone surrogates: not a name, and not echoed back
        raise BadInputError(f"'model' has characters no model name has: send one of "
                            f"{', '.join(service.client.model_names())}", param="model")
    return model


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadInputError(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

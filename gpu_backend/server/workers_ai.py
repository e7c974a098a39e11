"""Workers AI's REST routes: ``POST /accounts/{id}/ai/run/{model}`` and ``GET /accounts/{id}/ai/models/search``.

Answers use Cloudflare's envelope (``{"result", "success", "errors", "messages"}``), except a
stream, which is raw ``text/event-stream`` as on Cloudflare. The model name may arrive with
its slashes as they are or as ``%2F`` (the official SDK quotes them). In JSON mode ``response``
is the parsed JSON value, as on Cloudflare; with ``tools`` the calls the model made come as
``tool_calls: [{name, arguments}]`` next to the rest of its text. A body sent with ``?queueRequest=true``,
or one naming a ``request_id``, is an async batch queued or polled (batches.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .batches import batch_answer, is_batch_call, queue_request
from .answer_shapes import CHAT_COMPLETION, answer_shape
from .body import read_json
from .chat_completion import CompletionFrames, completion_events
from .catalog import search
from ..engine.embedder import EmbeddingResult
from .client import EngineClient
from .errors import BadInputError
from .generation import Completion, Generation, unless_disconnected
from .request_scope import resources
from .responses_output import ResponseEcho, ResponseFrame, response_object
from .schemas import SESSION_HEADER, EmbeddingsInput, TextGenerationInput, parse_embeddings, parse_text_generation
from .streaming import TRACE_HEADER, EventStream, workers_ai_events
from .structured import json_answer
from .tool_parsers import ToolParser, finds_calls

if TYPE_CHECKING:
    from .api import Service


def envelope(result: Any) -> dict[str, Any]:
    return {"result": result, "success": True, "errors": [], "messages": []}


def model_name(request: Request) -> str:
    return unquote(request.path_params["model"])


def served_model(request: Request, requested: str) -> str:
    """The served model that answers ``requested`` (itself, or a built-in for an unmapped Workers AI name);
    it is what the request is admitted, counted and answered as (``x-edgewise-model``)."""
    served = request.app.state.service.client.served_name(requested)
    request.state.model = served
    return served


async def run_model(request: Request) -> Response | EventStream:
    service = request.app.state.service
    requested = model_name(request)
    model = served_model(request, requested)
    info = service.client.model_info(model)
    body = await read_json(request, service.limits)
    queued = queue_request(request.query_params.get("queueRequest"))
    if is_batch_call(queued, body):  # async batches: queued, or polled by request_id
        return JSONResponse(envelope(await batch_answer(service, requested, info.task, body)))
    busy_refused = reject_if_busy(body)
    if info.task == "text-embeddings":
        return JSONResponse(envelope(await embeddings_result(request, model, body, busy_refused)))
    chat_completion = answer_shape(requested) == CHAT_COMPLETION  # answers as OpenAI's chat.completion
    inputs = parse_text_generation(body, requested, request.headers.get(SESSION_HEADER), service.limits,
                                   streams_json=chat_completion)
    if busy_refused:  # no await from here until Generation holds its slot: nothing can take the free one
        service.admission.refuse_if_busy(model)
    generation = await resources(request).enter_async_context(Generation(service, model, inputs))
    if inputs.stream and chat_completion and not inputs.responses_style:
        return EventStream(completion_events(generation, CompletionFrames(requested, chat=True), include_usage=True))
    if inputs.stream:
        trace = TRACE_HEADER in request.headers
        return EventStream(workers_ai_events(generation, trace))
    completion = await unless_disconnected(request, generation.complete())
    return JSONResponse(envelope(text_result(requested, inputs, completion, generation.tool_parser)))


async def embeddings_result(request: Request, model: str, body: Any, busy_refused: bool = False) -> dict[str, Any]:
    inputs = parse_embeddings(body, request.app.state.service.limits)
    return embeddings_output(inputs, await embed(request, model, inputs, busy_refused))


def embeddings_output(inputs: EmbeddingsInput, result: EmbeddingResult) -> dict[str, Any]:
    return {"shape": [len(result.vectors), len(result.vectors[0])], "data": result.vectors, "pooling": inputs.pooling}


async def embed(request: Request, model: str, inputs: EmbeddingsInput, busy_refused: bool = False) -> EmbeddingResult:
    """Embed under one of the model's admission slots; a client that leaves cancels the work."""
    service: Service = request.app.state.service
    resources(request).enter_context(service.admission.slot(model, reject_if_busy=busy_refused))
    result = await unless_disconnected(request, service.client.embed(model, inputs))
    service.metrics.prompt_tokens.labels(model).inc(result.num_tokens)
    return result


def reject_if_busy(body: Any) -> bool:
    """Workers AI's ``rejectIfBusy``, sent on REST in the body's ``options`` next to the inputs."""
    options = body.get("options") if isinstance(body, dict) else None
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadInputError(f"'options' must be an object such as {{\"rejectIfBusy\": true}}, got "
                            f"{type(options).__name__}", param="options")
    value = options.get("rejectIfBusy", False)
    if not isinstance(value, bool):
        raise BadInputError(f"'options.rejectIfBusy' must be true or false, got {value!r}", param="options")
    return value


def text_result(model: str, inputs: TextGenerationInput, completion: Completion, parser: ToolParser) -> dict[str, Any]:
    """The answer to ``model`` in its schema: Workers AI's, OpenAI's chat.completion (answer_shapes.py), or a
    Responses ``response`` for instructions/input."""
    if not inputs.responses_style and answer_shape(model) == CHAT_COMPLETION:
        return CompletionFrames(model, chat=True).answer(inputs, completion, parser)
    if not inputs.responses_style:
        logprobs = {} if completion.logprobs is None else {"logprobs": {"content": [
            item.openai() for item in completion.logprobs]}}  # asked with logprobs: true, in OpenAI's chat shape
        return {**_response(inputs, completion, parser), **logprobs, "usage": completion.usage.as_dict()}
    echo = ResponseEcho(include_logprobs=inputs.sampling.logprobs is not None)
    return response_object(ResponseFrame(model, inputs, echo), completion, parser)  # as /v1/responses answers


def _response(inputs: TextGenerationInput, completion: Completion, parser: ToolParser) -> dict[str, Any]:
    """``response`` (the JSON value in JSON mode), and the ``tool_calls`` the text holds, if any."""
    if inputs.response_format is not None:
        return {"response": json_answer(completion.text, completion.finish_reason, inputs.sampling.max_tokens,
                                        completion.usage.completion_tokens)}
    if not finds_calls(inputs):
        return {"response": completion.text}
    content, calls = parser.parse(completion.text, inputs.tools)
    return {"response": content, "tool_calls": [call.workers_ai() for call in calls]} if calls else \
        {"response": content}


async def search_models(request: Request) -> Response:
    client: EngineClient = request.app.state.service.client
    models = [client.model_info(name) for name in client.model_names()]
    page = search(models, dict(request.query_params))
    return JSONResponse(envelope(page))

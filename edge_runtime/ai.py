"""The `env.AI` binding: Workers AI's `run` and `models`, as workerd's `ai-api.ts` behaves, sent to
the nearest inference backend over its Cloudflare REST path.

Results come back as Python Workers get them: JSON as a `JsDict`, anything else (an SSE stream,
image bytes) as a byte stream relayed chunk by chunk, never buffered.

A backend that dies or goes silent mid-stream ends an SSE stream with one error event, as the backend
itself ends a stream whose generation failed (`data: {"error": {"code", "message"}}`, no `[DONE]`),
so the Worker and its client read a finished stream that says why; any other stream raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from edgewise_sdk.workers import BodyStream, Headers, Response, python_to_rpc, to_jsdict

from .ai_backends import AiBackends
from .catalog import Location
from .config import BackendSpec

log = logging.getLogger("edgewise.ai")

ACCOUNT_ID = "edgewise"  # the REST path needs an account; a local backend serves just one
RUN_PATH = "/client/v4/accounts/{account}/ai/run/{model}"
MODELS_PATH = "/client/v4/accounts/{account}/ai/models/search"
_IGNORED_OPTIONS = ("gateway", "prefix", "signal", "sessionOptions")
# options the backend reads from the REST body's "options", as Cloudflare's REST API takes them
_BODY_OPTIONS = ("rejectIfBusy",)
# options the backend reads from the query string, as Cloudflare's REST API takes them: async batches
_QUERY_OPTIONS = ("queueRequest",)
# refused, unresolvable, TLS failed or timed out while connecting: the request never went out
_UNREACHABLE = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
SSE_TYPE = "text/event-stream"
TIMEOUT_CODE = 3007  # Workers AI's code for a timeout
STREAM_BROKEN_CODE = 3043  # the backend's own code for a generation that failed mid-stream
# An SSE stream is relayed in whole events (a break never leaves half an event before the error event);
# a backend that sends this much without an event boundary is relayed as it comes.
MAX_PARTIAL_EVENT_BYTES = 1 << 20


class InferenceUpstreamError(Exception):
    """A failed `env.AI.run`; `message` is "<code>: <description>" when the backend gave a code."""

    def __init__(self, message: str, name: str = "InferenceUpstreamError") -> None:
        super().__init__(message)
        self.message = message
        self.name = name


class AiInternalError(InferenceUpstreamError):
    """A failed `env.AI.models` (ai-api.ts raises it with the backend's first error message)."""

    def __init__(self, message: str, name: str = "AiInternalError") -> None:
        super().__init__(message, name)


class Ai:
    """One PoP's `env.AI`: calls go to the nearest backend, and to the next when one refuses to connect."""

    def __init__(self, backends: AiBackends, location: Location) -> None:
        self._backends = backends
        self._ranked = backends.nearest_first(location)
        self.lastRequestId: str | None = None  # noqa: N815 - ai-api.ts names
        self.aiGatewayLogId: str | None = None  # noqa: N815
        self.lastRequestHttpStatusCode: int | None = None  # noqa: N815

    @property
    def backends(self) -> tuple[BackendSpec, ...]:
        """The backends this PoP calls, nearest first."""
        return self._ranked

    async def run(self, model: str, inputs: Mapping[str, Any], options: Mapping[str, Any] | None = None) -> Any:
        """The model's output: a JsDict for JSON, a byte stream for `stream: True` (SSE) or binary output;
        with `returnRawResponse`, the backend's response as a `workers.Response`."""
        extra_headers, raw = _read_options(options)
        model, body = _checked_call(model, inputs, _body_options(options))
        path = RUN_PATH.format(account=ACCOUNT_ID, model=quote(model, safe="@/"))
        spec, upstream = await self._send("POST", path, data=body, headers=extra_headers,
                                          params=_query_options(options))
        self._remember(upstream)
        if raw:
            return await _raw_response(upstream)
        if upstream.status >= 400:
            raise _upstream_error(await _read_text(upstream))
        if _media_type(upstream) == "application/json":
            return to_jsdict(_unwrapped(await _read_text(upstream)))
        return BodyStream(UpstreamStream(upstream, spec.url))

    async def models(self, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The backend's model catalog: `[{id, source, name, description, task, tags, properties}]`.

        `params` (author, hide_experimental, page, per_page, search, source, task) become the query.
        """
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(f"env.AI.models(params) takes a dict, got {type(params).__name__}")
        query = {key: _query_value(value) for key, value in (params or {}).items()}
        try:
            _, upstream = await self._send("GET", MODELS_PATH.format(account=ACCOUNT_ID), params=query)
        except InferenceUpstreamError as error:
            raise AiInternalError(error.message) from error.__cause__
        text = await _read_text(upstream)
        envelope = _json_or_none(text)
        if upstream.status >= 400 or not isinstance(envelope, dict) or not envelope.get("success", True):
            raise AiInternalError(_first_error_message(envelope) or text)
        result = envelope.get("result")
        if not isinstance(result, list):
            raise AiInternalError(f"the backend's model list is not a list: {text[:200]}")
        return to_jsdict(result)

    async def _send(self, method: str, path: str, **request: Any) -> tuple[BackendSpec, aiohttp.ClientResponse]:
        """The first backend, nearest first, that accepts the connection; none is tried once the request went out."""
        if not self._ranked:
            raise InferenceUpstreamError(
                "No AI backend is configured: `edgewise dev` starts one for an [ai] binding, "
                "or list yours under [[edgewise.backends]]"
            )
        unreachable = []
        for spec in self._ranked:
            try:
                return spec, await self._send_to(spec, method, path, **request)
            except _UNREACHABLE as error:
                log.warning("AI backend %s is unreachable (%s)%s", spec.url, _reason(error),
                            "; trying the next one" if spec is not self._ranked[-1] else "")
                unreachable.append(f"{spec.url} ({_reason(error)})")
        raise InferenceUpstreamError(f"The AI backend at {' and at '.join(unreachable)} is unreachable")

    async def _send_to(self, spec: BackendSpec, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                       **request: Any) -> aiohttp.ClientResponse:
        session = self._backends.session(spec)
        json_type = {"content-type": "application/json"} if "data" in request else {}
        # identity: the raw bytes relayed to the Worker are then the body itself
        sent_headers = {**json_type, **(headers or {}), "accept-encoding": "identity"}
        if spec.token is not None:
            sent_headers["authorization"] = f"Bearer {spec.token}"
        url = spec.url.rstrip("/") + path
        try:
            return await session.request(method, url, headers=sent_headers, allow_redirects=False, **request)
        except _UNREACHABLE:
            raise
        except asyncio.TimeoutError as error:
            timeouts = self._backends.timeouts
            raise InferenceUpstreamError(f"3007: The AI backend at {spec.url} did not answer within "
                                         f"{timeouts.read_s:g} s ({_reason(error)})") from error
        except aiohttp.ClientError as error:
            raise InferenceUpstreamError(f"The AI backend at {spec.url} failed: {_reason(error)}") from error

    def _remember(self, upstream: aiohttp.ClientResponse) -> None:
        self.lastRequestId = upstream.headers.get("cf-ai-req-id")
        self.aiGatewayLogId = upstream.headers.get("cf-aig-log-id")
        self.lastRequestHttpStatusCode = upstream.status


class UpstreamStream:
    """A backend's streamed body, relayed as it arrives; closing it early closes the connection, which
    makes the backend abort the generation."""

    def __init__(self, upstream: aiohttp.ClientResponse, url: str) -> None:
        self._upstream = upstream
        self._url = url
        self._is_sse = _media_type(upstream) == SSE_TYPE
        self._started = False
        self._loop = asyncio.get_running_loop()

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._started:
            raise OSError("Body already used: an AI stream can be read once")
        self._started = True
        return self._relay()

    async def _relay(self) -> AsyncIterator[bytes]:
        chunks = self._upstream.content.iter_any()  # whatever arrived, never a fixed size
        try:
            async for chunk in (_whole_events(chunks) if self._is_sse else chunks):
                yield chunk
        except (asyncio.TimeoutError, aiohttp.ClientError) as error:
            code, message = self._failure(error)
            if not self._is_sse:
                raise InferenceUpstreamError(f"{code}: {message}") from error
            log.warning("%s", message)
            yield _error_event(code, message)
        finally:
            self._upstream.close()  # after the end: a no-op, the connection is back in the pool

    def _failure(self, error: BaseException) -> tuple[int, str]:
        if isinstance(error, asyncio.TimeoutError):
            return TIMEOUT_CODE, f"The AI backend at {self._url} went silent mid-stream"
        return STREAM_BROKEN_CODE, f"The AI stream from {self._url} broke: {_reason(error)}"

    async def aclose(self) -> None:
        self._upstream.close()

    def __del__(self) -> None:
        # A stream the Worker dropped unread must still close its connection (and so stop the generation).
        if not self._upstream.closed and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._upstream.close)


async def _whole_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks cut after their last complete SSE event; the rest waits for the next chunk."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        end = _end_of_last_event(pending) or (len(pending) if len(pending) > MAX_PARTIAL_EVENT_BYTES else 0)
        if end:
            yield pending[:end]
            pending = pending[end:]
    if pending:
        yield pending  # a clean end without a last blank line: the bytes are the backend's to send


def _end_of_last_event(buffer: bytes) -> int:
    """Where the last complete event in ``buffer`` ends; 0 when none is complete."""
    return max((buffer.rfind(end) + len(end) for end in (b"\n\n", b"\r\n\r\n") if end in buffer), default=0)


def _error_event(code: int, message: str) -> bytes:
    payload = {"error": {"code": code, "message": message}}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


# ---- call arguments ---------------------------------------------------------------------


def _checked_call(model: Any, inputs: Any, body_options: Mapping[str, Any]) -> tuple[str, bytes]:
    """The model name and the JSON body (the inputs, with ``body_options`` under ``options``); what could not
    cross Cloudflare's RPC boundary fails here too."""
    if not isinstance(model, str) or not model:
        raise TypeError(f'env.AI.run(model, inputs): model must be a name like "@cf/meta/llama-3.1-8b-instruct", '
                        f"got {model!r}")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"env.AI.run(model, inputs): inputs must be a dict, got {type(inputs).__name__}")
    try:
        body = python_to_rpc(dict(inputs))
        if body_options:
            sent = body.get("options")
            body["options"] = {**(sent if isinstance(sent, Mapping) else {}), **body_options}
        return model, json.dumps(body).encode()
    except (TypeError, ValueError) as error:
        raise TypeError(f"env.AI.run: inputs must be JSON data: {error}") from None


def _read_options(options: Any) -> tuple[dict[str, str], bool]:
    """(extra request headers, returnRawResponse); options only Cloudflare's network can honour are ignored."""
    if options is None:
        return {}, False
    if not isinstance(options, Mapping):
        raise TypeError(f"env.AI.run(model, inputs, options): options must be a dict, got {type(options).__name__}")
    if options.get("websocket"):
        raise TypeError("env.AI.run(..., {'websocket': True}) is not supported by edgewise; "
                        "use {'stream': True} in the inputs for a streamed reply")
    for name in _IGNORED_OPTIONS:
        if name in options:
            log.debug("env.AI.run: option %r is ignored locally: %r", name, options[name])
    extra = options.get("extraHeaders") or {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"env.AI.run options: extraHeaders must be a dict, got {type(extra).__name__}")
    # the backend's token is ours to send: a Worker cannot replace it
    headers = {str(k).lower(): str(v) for k, v in extra.items() if str(k).lower() != "authorization"}
    return headers, bool(options.get("returnRawResponse"))


def _body_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run options the backend reads from the body; `rejectIfBusy` must be a bool, as Cloudflare's is."""
    sent = {name: options[name] for name in _BODY_OPTIONS if options is not None and name in options}
    for name, value in sent.items():
        if not isinstance(value, bool):
            raise TypeError(f"env.AI.run options: {name} must be True or False, got {value!r}")
    return sent


def _query_options(options: Mapping[str, Any] | None) -> dict[str, str]:
    """The run options sent as query parameters: `queueRequest: True` queues `{"requests": [...]}` as an
    async batch (`?queueRequest=true`); polling it takes `{"request_id": ...}` and no option."""
    sent = {name: options[name] for name in _QUERY_OPTIONS if options is not None and name in options}
    for name, value in sent.items():
        if not isinstance(value, bool):
            raise TypeError(f"env.AI.run options: {name} must be True or False, got {value!r}")
    return {name: "true" for name, value in sent.items() if value}


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)  # JS toString()


# ---- replies ----------------------------------------------------------------------------


async def _read_text(upstream: aiohttp.ClientResponse) -> str:
    try:
        return (await upstream.read()).decode("utf-8", errors="replace")
    except aiohttp.ClientError as error:
        raise InferenceUpstreamError(f"Reading the AI backend's reply failed: {_reason(error)}") from error
    finally:
        upstream.close()


def _media_type(upstream: aiohttp.ClientResponse) -> str:
    return upstream.headers.get("content-type", "").split(";")[0].strip().lower()


def _unwrapped(text: str) -> Any:
    """The result inside the v4 envelope (a bare result is taken as it is)."""
    body = _json_or_none(text)
    if body is None and text.strip() != "null":
        raise InferenceUpstreamError(text)
    if isinstance(body, dict) and "result" in body and "success" in body:
        if body["success"] is False:
            raise _upstream_error(text)
        return body["result"]
    return body


def _upstream_error(text: str) -> InferenceUpstreamError:
    """ai-api.ts `_parseError`: internalCode, else errors[0], else the raw text."""
    body = _json_or_none(text)
    if isinstance(body, dict) and body.get("internalCode"):
        name = body.get("name") or "InferenceUpstreamError"
        return InferenceUpstreamError(f"{body['internalCode']}: {body.get('description')}", str(name))
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return InferenceUpstreamError(f"{errors[0].get('code')}: {errors[0].get('message')}")
    return InferenceUpstreamError(text)


def _first_error_message(body: Any) -> str | None:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message"))
    return None


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


async def _raw_response(upstream: aiohttp.ClientResponse) -> Response:
    """`returnRawResponse`: the reply as a Response; a JSON success is un-enveloped, as the binding's is."""
    headers = Headers((name, value) for name, value in upstream.headers.items()
                      if name.lower() not in ("content-length", "transfer-encoding", "connection"))
    if _media_type(upstream) != "application/json":
        return Response._from_parts(upstream.status, headers, UpstreamStream(upstream, str(upstream.url)))
    text = await _read_text(upstream)
    body = _json_or_none(text)
    if upstream.status < 400 and isinstance(body, dict) and body.get("success") is True and "result" in body:
        text = json.dumps(body["result"])
    return Response._from_parts(upstream.status, headers, text.encode())


def _reason(error: BaseException) -> str:
    text = str(error)
    return text or type(error).__name__

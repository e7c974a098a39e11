"""The service's errors, each with its HTTP status, Workers AI error code and OpenAI error type.

Every route answers errors through here: Workers AI routes with Cloudflare's envelope
(``{"result": null, "success": false, "errors": [{"code", "message"}], "messages": []}``), whose
``"<code>: <message>"`` the AI binding turns into ``InferenceUpstreamError``; OpenAI routes with
OpenAI's ``{"error": {"message", "type", "param", "code"}}``. Codes follow Workers AI's error
table (5007 no such model, 5006 bad input as ``AiError: Bad input: ...``, 5005 LoRA not
supported, 3006 request too large, 3007 timeout, 3040 overloaded) and Cloudflare's 10000 for
authentication.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import EngineError, InvalidRequestError, PromptTooLongError, InstanceFailedError, InstanceLostError

# Cloudflare's table lists no code for an internal failure; this one is the service's own.
INTERNAL_ERROR_CODE = 3043


class ServiceError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[int] = INTERNAL_ERROR_CODE
    openai_type: ClassVar[str] = "server_error"
    openai_status: ClassVar[int | None] = None  # when OpenAI's clients expect another status

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def envelope(self) -> dict[str, Any]:
        return {"result": None, "success": False, "errors": [{"code": self.code, "message": self.message}],
                "messages": []}

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.openai_type, "param": self.param,
                          "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after_s)} if self.retry_after_s is not None else {}


class BadInputError(ServiceError):
    """The inputs do not match the model's schema; the message says which field and why."""

    status, code, openai_type = 400, 5006, "invalid_request_error"

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        super().__init__(f"AiError: Bad input: {detail}", param=param)
        self.detail = detail


class NoSuchModelError(ServiceError):
    status, code, openai_type, openai_status = 400, 5007, "invalid_request_error", 404

    def __init__(self, model: str, available: list[str], reason: str | None = None) -> None:
        known = ", ".join(available) or "none"
        why = f": {reason}" if reason else ""
        super().__init__(f"No such model {model} or task{why} (this backend serves: {known})", param="model")


class LoraUnsupportedError(ServiceError):
    status, code, openai_type = 405, 5005, "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model {model} does not support LoRa inference; remove 'lora'", param="lora")


class InputTooLongError(ServiceError):
    """The prompt does not fit the model's context window."""

    status, code, openai_type, openai_status = 413, 5021, "invalid_request_error", 400


class UnknownBatchError(ServiceError):
    """A poll for a ``request_id`` that no batch has: never queued here, or its answers expired. Cloudflare
    documents no code for it: 404, with Workers AI's bad-input code."""

    status, code, openai_type = 404, 5006, "invalid_request_error"

    def __init__(self, request_id: str, retention_s: float) -> None:
        super().__init__(f"AiError: Bad input: no batch has request_id {request_id}: it was never queued on this "
                         f"backend, or it finished more than {retention_s:g} s ago and its results were deleted",
                         param="request_id")


class RequestTooLargeError(ServiceError):
    status, code, openai_type = 413, 3006, "invalid_request_error"


class RequestTimeoutError(ServiceError):
    status, code, openai_type = 408, 3007, "timeout"


class OverloadedError(ServiceError):
    """The request queue is full; the client should retry after ``retry_after_s``."""

    status, code, openai_type = 429, 3040, "rate_limit_error"


class MissingTokenError(ServiceError):
    status, code, openai_type = 401, 10000, "authentication_error"

    def __init__(self) -> None:
        super().__init__("Authentication error: send the backend's token as 'Authorization: Bearer <token>'")


class BadTokenError(ServiceError):
    status, code, openai_type = 403, 10000, "authentication_error"

    def __init__(self) -> None:
        super().__init__("Authentication error: the bearer token is not this backend's token")


class EngineFailedError(ServiceError):
    """The engine stopped or failed while serving the request."""

    status, code, openai_type = 500, INTERNAL_ERROR_CODE, "server_error"


class NoRouteError(ServiceError):
    """No route takes the path (Cloudflare's API answers 7000 "No route for that URI")."""

    status, code, openai_type = 404, 7000, "invalid_request_error"

    def __init__(self, path: str) -> None:
        super().__init__(f"No route for that URI: {path}")


class MethodNotAllowedError(ServiceError):
    status, code, openai_type = 405, 7000, "invalid_request_error"

    def __init__(self, method: str, path: str, allowed: str) -> None:
        super().__init__(f"No route for that URI: {path} takes {allowed}, not {method}")


class InstanceUnavailableError(ServiceError):
    """The model's instance lost a rank and is restarting (``retry_after_s`` set: retrying shortly can
    succeed), or every restart is used up (none: only restarting the backend helps)."""

    status, code, openai_type = 503, INTERNAL_ERROR_CODE, "server_error"


def is_openai(path: str) -> bool:
    """Whether ``path`` is an OpenAI-compatible route, answered with OpenAI's error body."""
    return path.startswith("/v1/") or "/ai/v1/" in path


def from_engine_error(error: EngineError) -> ServiceError:
    """The service error for an engine error (the engine's message names the problem)."""
    if isinstance(error, InstanceFailedError):
        return InstanceUnavailableError(f"AiError: the model has failed permanently and the backend must be "
                                      f"restarted: {error}")
    if isinstance(error, InstanceLostError):
        return InstanceUnavailableError(f"AiError: the model's instance is unavailable: {error}", retry_after_s=5)
    if isinstance(error, PromptTooLongError):
        return InputTooLongError(f"AiError: {error}")
    if isinstance(error, InvalidRequestError):
        return BadInputError(str(error))
    return EngineFailedError(f"AiError: the inference engine failed: {error}")
